"""The population's training loop: every member's optimizer step at once, each as its solo run would make it.

Per optimizer step: each data seed's minibatch (the data module's stream, a pure function of (data.seed, rank 0,
step), so members with one data seed share it and each matches its solo run's); one vmapped forward and one
backward for all members (stacked.PopulationNet); per-member clipping; then each member's own torch optimizer
steps its own Parameters (rows of the stacked weights) and sets its own next lr (the engine's StepEngine.set_lr).
Host syncs happen once per chunk of steps (the divergence check), not per step.

On the steps where a member's step callback is due (the diagnostics, the sample text: member.py's contract), every
member makes the solo run's own step instead (`solo_steps`): its own net's forward and backward, then its
optimizer's step(), so the callbacks' hooks see what they would see in a solo run. The diagnostics measure every
200th step by default: one such step in 200 (the clock arms their forward hooks before it: StepClock.arm).
"""

import contextlib
import logging
import math
import time
from pathlib import Path

import torch

from makemore_lab import console
from makemore_lab.atomic_write import last_good
from makemore_lab.commands import sweep_resume_command
from makemore_lab.data.batches import MinibatchStream
from makemore_lab.engine import divergence
from makemore_lab.errors import TrainingDiverged, TrainingInterrupted, UserError
from makemore_lab.losses import split_loss, training_loss
from makemore_lab.population.member import Member
from makemore_lab.population.processes import StopFlag, stopping_on_signals
from makemore_lab.population.stacked import PopulationNet
from makemore_lab.resume import cannot_write

log = logging.getLogger(__name__)

MAX_CHUNK = 200  # steps between host syncs, as steps_per_call for a solo run


class Population:
    def __init__(self, members: list[Member], device: torch.device, stop: StopFlag | None = None):
        self.members, self.device = members, device
        first = members[0].cfg
        self.max_steps = first.trainer.max_steps
        self.val_every, self.log_every = first.trainer.val_check_interval, first.trainer.log_every_n_steps
        self.all_positions = members[0].datamodule.train_on == "items"
        self.batch_size = first.data.batch_size
        self.stacked = PopulationNet([m.net for m in members])
        # One minibatch stream per data seed; `feeds[i]` is member i's.
        seeds = sorted({m.datamodule.seed for m in members})
        examples = members[0].datamodule.train_examples  # the same split for every member (one population key)
        self.examples = examples
        self.streams = [MinibatchStream(len(examples), self.batch_size, 1, 0, seed) for seed in seeds]
        self.feeds = torch.tensor([seeds.index(m.datamodule.seed) for m in members], device=device)
        clip = [m.cfg.trainer.get("gradient_clip_val") or math.inf for m in members]
        self.clip_values = torch.tensor(clip, device=device)
        self.clipping = any(math.isfinite(c) for c in clip)  # decided here: no per-step host sync
        self.clip_algorithm = first.trainer.get("gradient_clip_algorithm") or "norm"
        self.plain_sgd = all(is_plain_sgd(m.optimizer) for m in members)
        self._sgd_rates: tuple | None = None  # the (lr, weight decay) per member that _minus_lr and _wd hold
        # Why to stop early: this population's own, with its own signal handlers, or the one shared by populations
        # trained side by side in several processes (population/processes.py), whose handlers are their parent's.
        self.stop, self.owns_stop = (StopFlag(), True) if stop is None else (stop, False)

    @property
    def stop_signal(self) -> str | None:
        return self.stop.requested

    def loss(self, net, x, y):
        return training_loss(net, x, y, self.all_positions)

    def minibatches(self, step: int, count: int):
        """(x, y) of `count` steps from `step`: (count, B, ...) shared, or (count, N, B, ...), one row per member."""
        gathered = [self.examples[stream.minibatches(step, count)] for stream in self.streams]
        x, y = (
            torch.stack([g[i].view(count, self.batch_size, *g[i].shape[1:]) for g in gathered], dim=1).to(self.device)
            for i in (0, 1)
        )
        if len(self.streams) == 1:
            return x[:, 0], y[:, 0]
        return x[:, self.feeds], y[:, self.feeds]

    def clip(self) -> None:
        """trainer.gradient_clip_val per member (torch's clip_grad_norm_ / clip_grad_value_ arithmetic, each member
        over its own gradients: never one norm across members)."""
        if not self.clipping:
            return
        grads = self.stacked.grads()
        shaped = lambda t, g: t.view(-1, *[1] * (g.dim() - 1))
        if self.clip_algorithm == "value":
            for g in grads:
                g.clamp_(-shaped(self.clip_values, g), shaped(self.clip_values, g))
            return
        norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads]).norm(dim=0)  # (N,)
        coef = (self.clip_values / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(shaped(coef, g))

    def step(self, x, y, step: int, active: list[Member]) -> torch.Tensor:
        self.stacked.zero_grad(member_views=not self.plain_sgd)
        losses = self.stacked.losses(x, y, self.all_positions, shared=len(self.streams) == 1)
        losses.sum().backward()  # member i's loss depends on member i's weights only: each gets its own gradient
        self.clip()
        if self.plain_sgd:
            self.sgd_step()
        else:
            for member in active:
                member.optimizer.step()
        for member in active:
            member.module.engine.set_lr(member.optimizer, step + 1)
        return losses.detach()

    def solo_steps(self, x, y, step: int, active: list[Member]) -> torch.Tensor:
        """Step `step` as each member's solo run makes it (the step callbacks' hooks fire); (N,) losses, 0 for a
        stopped member."""
        self.stacked.bind_member_grads()
        shared = len(self.streams) == 1
        for member in active:
            for clock in member.clocks:
                clock.count_to(step)  # the vectorised steps call no optimizer.step(): count them (and arm the clock)
        losses = []
        for i, member in enumerate(self.members):
            if not member.active:
                losses.append(torch.zeros((), device=self.device))
                continue
            loss = self.loss(member.net, x if shared else x[i], y if shared else y[i])
            loss.backward()
            losses.append(loss.detach())
            if member.module.initial_loss is None and step == 0:  # the initial-loss check reads it at step 0
                member.module.initial_loss = loss.item()
        self.clip()
        for member in active:
            member.optimizer.step()
            member.module.engine.set_lr(member.optimizer, step + 1)
        return torch.stack(losses)

    def next_hooked_step(self, step: int) -> int:
        """The first step >= `step` at which a member's step callback is due (max_steps if none)."""
        due = [clock.due_step for m in self.active for clock in m.clocks]
        return int(min([self.max_steps, *due]))

    def sgd_step(self) -> None:
        """All members' torch SGD steps without momentum as one op per stacked tensor: p -= lr * (g + wd * p),
        torch's SGD arithmetic with each member's own lr and weight decay (a stopped member's lr is 0). The lecture
        sweep's case; a member loop of SGD steps costs a quarter of a 16-member population step. Torch's SGD keeps
        no state without momentum, so the members' optimizer state_dicts are what stepping them would leave."""
        rates = tuple(
            (g["lr"] if m.active else 0.0, g["weight_decay"]) for m in self.members for g in m.optimizer.param_groups
        )
        if rates != self._sgd_rates:  # set once per schedule change, not per step
            self._sgd_rates = rates
            lr, self._wd = torch.tensor(rates, device=self.device).T
            self._minus_lr = -lr
            self._decay = any(wd for _, wd in rates)  # read here, on the host: no per-step device sync
        for stacked in self.stacked.stacked_params.values():
            if stacked.grad is None:  # not used by the loss: torch's SGD skips it too
                continue
            shape = (-1, *[1] * (stacked.dim() - 1))
            update = stacked.grad + self._wd.view(shape) * stacked.detach() if self._decay else stacked.grad
            stacked.detach().addcmul_(update, self._minus_lr.view(shape))  # one pass: p += (-lr) * update

    def fit(self) -> None:
        """Train until max_steps, every member stopped, or a signal; every member's result is set at the end."""
        step = self.members[0].start_step
        for member in self.members:
            member.start_callbacks()
        started = time.perf_counter()
        with stopping_on_signals(self.stop) if self.owns_stop else contextlib.nullcontext():
            try:
                step = self.train_until_stopped(step, started)
            except OSError as err:  # a full (or read-only) disk: every member still training ends with its line
                for member in self.active:
                    with member.logging_to_train_log():
                        member.fail(self.cannot_write(err, member))
                return
        seconds = time.perf_counter() - started
        if self.stop_signal:
            self.interrupted(step)
        for member in self.active:
            self.finish(member, step, seconds)

    def train_until_stopped(self, step: int, started: float) -> int:
        """Steps from `step` until max_steps, every member stopped, or a signal; returns the step reached."""
        last_save, self.stopped_at = started, step
        while step < self.max_steps and self.active and not self.stop_signal:
            hooked = self.next_hooked_step(step)
            count = (
                1
                if hooked == step
                else min(
                    MAX_CHUNK - step % MAX_CHUNK, hooked - step, self.max_steps - step, *self.until_next_event(step)
                )
            )
            xs, ys = self.minibatches(step, count)
            active = self.active
            if hooked == step:
                losses = self.solo_steps(xs[0], ys[0], step, active).unsqueeze(0)
            else:
                losses = torch.stack([self.step(xs[j], ys[j], step + j, active) for j in range(count)])  # (count, N)
            if step == 0:
                for member, loss in zip(self.members, losses[0].tolist()):
                    if member.module.initial_loss is None:
                        member.module.initial_loss = loss
            self.stop_diverged(losses, step)
            step += count
            self.stopped_at = step  # where a failed save or log write stopped it
            if step % self.log_every == 0:
                self.log_training(losses[-1], step)
            if step % self.val_every == 0:
                self.validate(step, time.perf_counter() - started)
                last_save = time.perf_counter()
            elif self.checkpoint_due(time.perf_counter() - last_save):
                for member in self.active:
                    member.save_last(step)
                last_save = time.perf_counter()
        return step

    def cannot_write(self, err: OSError, member: Member) -> UserError:
        """resume.cannot_write's line for the member whose file it was; the others say whose write stopped them."""
        if err.filename and Path(err.filename).is_relative_to(member.out_dir):
            return cannot_write(err, self.stopped_at, member.out_dir)
        return UserError(
            f"stopped at step {self.stopped_at} with its population: cannot write another member's file "
            f"({err.strerror}: {err.filename}); {last_good(member.out_dir)}"
        )

    def finish(self, member: Member, step: int, seconds: float) -> None:
        """The member's final report; a UserError there (final_weights=best without a validation, a full disk)
        ends this member alone."""
        with member.logging_to_train_log():
            overrides = " ".join(member.module.checkpoint_meta.get("overrides", []))
            log.info(
                "final report at step %d%s",
                step,
                f" ({overrides})" if overrides else "",  # what follows
                extra=console.TRAIN_LOG_ONLY,
            )  # the console has the job's own line
            try:
                member.finish(step, seconds, len(self.members))
            except UserError as err:
                member.fail(err)
            except OSError as err:  # its summary.json or a checkpoint on a full disk
                member.fail(self.cannot_write(err, member))

    @property
    def active(self) -> list[Member]:
        return [m for m in self.members if m.active]

    def until_next_event(self, step: int) -> tuple[int, int]:
        return self.val_every - step % self.val_every, self.log_every - step % self.log_every

    def checkpoint_due(self, since_save: float) -> bool:
        cadences = [m.last_every_seconds for m in self.active if m.last_every_seconds]
        return bool(cadences) and since_save >= min(cadences)

    def stop_diverged(self, losses: torch.Tensor, first_step: int) -> None:
        """A member whose loss diverged (engine.divergence) stops alone (one check per chunk: one host sync)."""
        for i, member in enumerate(self.members):
            why = member.active and divergence(losses[:, i], first_step, member.module.initial_loss)
            if why:
                last = member.out_dir / "checkpoints" / "last.ckpt"
                kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was saved before it"
                with member.logging_to_train_log():
                    member.fail(TrainingDiverged(f"{why}; {kept}"))

    def log_training(self, last_losses: torch.Tensor, step: int) -> None:
        for member, loss in zip(self.members, last_losses.tolist()):
            if member.active:
                lr = member.optimizer.param_groups[0]["lr"]
                for logger in member.loggers:
                    logger.log_metrics({"train/loss": loss, "lr": lr, "step": float(step)}, step=step)

    def validate(self, step: int, seconds: float) -> None:
        """Each member's exact val loss (split_loss, eval mode: its own BatchNorm statistics), its best checkpoint,
        last.ckpt, and early stopping where its config asks for it."""
        for member in self.active:
            with member.logging_to_train_log():
                val = split_loss(member.net, member.datamodule, "val")
                log.info("step %d: val loss %.4f", step, val)
                stop = member.validated(val, step)
                member.save_last(step)
                if stop and step < self.max_steps:
                    log.info("early stopping: no better val loss in %d validations", member.stale_validations)
            if stop and step < self.max_steps:
                self.finish(member, step, seconds)

    def interrupted(self, step: int) -> None:
        resume = sweep_resume_command([m.out_dir for m in self.members])
        if not self.active:  # the signal came after every member had ended (stopped early, failed): nothing stopped
            raise TrainingInterrupted(
                f"{self.stop_signal} after every member of the population of {len(self.members)} "
                f"had ended: their results are kept. Continue the sweep with: {resume}",
                exit_code=self.stop.exit_code,
            )
        where = (
            f"population of {len(self.members)} stopped at step {step} of {self.max_steps}; every member's "
            "checkpoint saved"
        )
        error = TrainingInterrupted(
            f"{self.stop_signal}: {where}. Resume with: {resume}", exit_code=self.stop.exit_code
        )
        for member in self.active:
            member.save_last(step)
            member.release(error)
        if self.owns_stop:  # side by side, the handlers' process hands over, once (processes.train_side_by_side)
            self.stop.hand_over(where, resume)
        raise error


def is_plain_sgd(optimizer: torch.optim.Optimizer) -> bool:
    return type(optimizer) is torch.optim.SGD and all(
        not g["momentum"] and not g["maximize"] for g in optimizer.param_groups
    )
