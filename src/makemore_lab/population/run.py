"""A population trained by the one Trainer: the members' stacked net as a CharLM, each member still a job.

Lightning's loop trains a population as it trains a run (module.py, engine.py): `PopulationLM` is the CharLM whose
net is the members' `PopulationNet` and whose loss is each member's own, (N,); the engine sums them for backward
(each member gets the gradient of its own loss) and makes `steps_per_call` steps per Lightning batch. Validation
cadence, `max_time`, precision, the loggers' cadence, signals (resume.fit) and every population-wide callback are
Lightning's. What makes each member a job goes through Lightning's extension points:

- `MembersOptimizer`: a torch Optimizer whose param groups are the members' own optimizers' (each member's lr,
  schedule and state its own); plain SGD steps every member in one op per stacked tensor;
- `MemberLoggers`: a Logger that routes `members/<i>/<metric>` to member i's own loggers;
- `MemberCheckpointIO`: Lightning builds the population's checkpoint dict, the plugin writes each member's own file
  (a run's checkpoint: its rows of the weights, its optimizer state, its callbacks' state), and assembles the
  population's dict from the members' files on resume;
- `Population` (a Callback): each member's validation (its best checkpoint, early stopping), divergence (a diverged
  member stops alone, the others go on), final report, and the stop of a whole population.

A member's step callbacks (diagnostics, sample text: member.py's contract) see the solo run's own step on the steps
they are due: there, `PopulationLM` runs each member's own forward and `MembersOptimizer` steps each member's own
optimizer (their torch step hooks fire); on the other steps their clocks only count.
"""

import contextlib
import dataclasses
import logging
import math
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger
from torch.utils.data import DataLoader, IterableDataset

from makemore_lab import console, resume
from makemore_lab.atomic_write import last_good
from makemore_lab.checkpoint import read_checkpoint, save_atomically
from makemore_lab.checkpoint_io import AtomicCheckpointIO
from makemore_lab.commands import sweep_resume_command
from makemore_lab.data.batches import MinibatchStream
from makemore_lab.engine import divergence
from makemore_lab.errors import TrainingDiverged, TrainingInterrupted, UserError
from makemore_lab.losses import batch_loss, training_loss
from makemore_lab.module import CharLM
from makemore_lab.population.member import Member
from makemore_lab.population.pbt import PBT
from makemore_lab.population.processes import StopFlag, stopping_on_signals
from makemore_lab.population.stacked import PopulationNet
from makemore_lab.train import build

log = logging.getLogger(__name__)


class PopulationLM(CharLM):
    """The CharLM of a population: its net is the members' PopulationNet, its loss each member's (N,)."""

    def __init__(self, population: "Population"):
        members = population.members
        first = members[0].module
        clips = [m.module.engine.plan.gradient_clip_val or math.inf for m in members]
        super().__init__(
            PopulationNet([m.net for m in members]),
            first.optimizer_factory,
            first.schedule_factory,
            first.batch_size,
            first.checkpoint_meta,
            first.all_positions,
            # the engine clips (clip_gradients) where any member clips
            dataclasses.replace(first.engine.plan, gradient_clip_val=min(clips) if min(clips) < math.inf else None),
        )
        self.clip_values = torch.tensor(clips, device=population.device)
        self.population = population
        self.shared = len({m.datamodule.seed for m in members}) == 1  # one minibatch for every member
        engines = [m.module.engine for m in members]
        self.engine.lr_multiplier = lambda step: tuple(e.lr_multiplier(step) for e in engines)  # each its own
        self.hooked = 0  # the next step at which a member's step callback is due (its solo run's own step)

    @property
    def members(self) -> list[Member]:
        return self.population.members

    def train(self, mode: bool = True):
        """The members' own nets (not submodules: their Parameters are rows of the stacked ones) follow."""
        super().train(mode)
        population = self.__dict__.get("population")
        for member in population.members if population is not None else []:
            member.net.train(mode)
        return self

    def on_validation_model_eval(self) -> None:
        super().on_validation_model_eval()
        self.train(False)

    def on_validation_model_train(self) -> None:
        super().on_validation_model_train()  # Lightning restores each submodule's mode: the members' nets are not
        for member in self.members:
            member.net.train()

    def configure_optimizers(self):
        return MembersOptimizer(self.population)

    def on_train_start(self) -> None:
        self.first_step = self.global_step
        self.engine.set_lr(self.optimizers().optimizer, self.global_step, base_changed=True)  # a resume reloaded them
        self.hooked = self.global_step

    def _minibatch_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        step = self.global_step
        if not self.shared:  # (B, N, ...) as the loader stacks them: member i's minibatch is row i
            x, y = x.movedim(1, 0), y.movedim(1, 0)
        if step >= self.hooked:
            self.hooked = self.population.next_hooked_step(step)
        if step == self.hooked:
            losses = self.solo_losses(x, y, step)
        else:
            losses = self.net.losses(x, y, self.all_positions, self.shared)
        if step == 0 and self.initial_loss is None:
            self.initial_loss = losses.tolist()  # one sync, on the first step only
            for member, loss in zip(self.members, self.initial_loss):
                member.module.initial_loss = loss
        return losses

    def solo_losses(self, x, y, step: int) -> torch.Tensor:
        """Step `step` as each member's solo run makes it: its own net's forward (the callbacks' forward hooks fire)
        into its own `.grad` (rows of the stacked gradients), then its own optimizer's step (MembersOptimizer.solo)."""
        self.net.bind_member_grads()
        self.optimizers().optimizer.solo = True
        losses = []
        for i, member in enumerate(self.members):
            if not member.active:
                losses.append(torch.zeros((), device=x.device))
                continue
            for clock in member.clocks:
                clock.count_to(step)  # the vectorised steps call no member optimizer's step(): count them
            xi, yi = (x, y) if self.shared else (x[i], y[i])
            losses.append(training_loss(member.net, xi, yi, self.all_positions))
        return torch.stack(losses)

    def check_divergence(self, losses: torch.Tensor, first_step: int) -> None:
        """engine.divergence per member: a diverged member stops alone (its lr 0 from here), the others go on."""
        for i, member in enumerate(self.members):
            why = member.active and divergence(losses[:, i], first_step, member.module.initial_loss)
            if why:
                self.population.diverged(member, why)

    def training_step(self, batch, batch_idx):
        losses = self.engine.run_batch(self, *batch, self.batch_size)
        if losses is None:
            return None
        last = losses[-1].tolist()  # the divergence check has synced already
        for i, member in enumerate(self.members):
            if member.active:  # MemberLoggers hands `members/<i>/...` to member i's loggers
                self.log(f"members/{i}/train/loss", last[i])
                self.log(f"members/{i}/lr", member.optimizer.param_groups[0]["lr"])
        self.log("step", float(self.global_step))
        return None

    def clip_gradients(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Each member's own trainer.gradient_clip_val (torch's clip_grad_norm_ / clip_grad_value_ arithmetic, each
        member over its own gradients: never one norm across members; no clipping is an infinite value)."""
        grads, limits = self.net.grads(), self.clip_values
        rows = lambda per_member, g: per_member.view(-1, *[1] * (g.dim() - 1))  # (N,) against g's (N, ...)
        if gradient_clip_algorithm == "value":
            for g in grads:
                g.clamp_(-rows(limits, g), rows(limits, g))
            return
        norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads]).norm(dim=0)  # (N,)
        coef = (limits / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(rows(coef, g))

    def validation_step(self, batch, batch_idx):
        """Each member's own net on the batch (eval mode: its own BatchNorm statistics): its solo run's numbers."""
        for i, member in enumerate(self.members):
            if member.active:
                loss, scored = batch_loss(member.net, batch)
                self.log(f"members/{i}/val/loss", loss, batch_size=scored)
        self.log("step", float(self.global_step), batch_size=1)  # the same in every batch: any weight

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        pass  # each member's file gets its own (MemberCheckpointIO)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.initial_loss = [m.module.initial_loss for m in self.members]  # each member loaded its own


class MembersOptimizer(torch.optim.Optimizer):
    """Every member's own torch optimizer as one: its param groups are the members' (the same dicts), so the
    engine's lr schedule writes each member's lr and a checkpoint holds each member's state. A stopped member's
    optimizer makes no step."""

    def __init__(self, population: "Population"):
        self.population = population
        self.stacked = population.module.net
        optimizers = [m.optimizer for m in population.members]
        super().__init__([p for o in optimizers for g in o.param_groups for p in g["params"]], {})
        self.param_groups = [g for o in optimizers for g in o.param_groups]
        self.plain_sgd = all(is_plain_sgd(o) for o in optimizers)
        self.solo = False  # this step is a solo step (PopulationLM.solo_losses): each member's optimizer steps
        self._sgd_rates: tuple | None = None

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [m.optimizer for m in self.population.members]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.stacked.zero_grad(member_views=self.solo or not self.plain_sgd)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:  # Lightning's (one step per batch): its hooks and clipping
            with torch.enable_grad():
                loss = closure()
        if self.plain_sgd and not self.solo:
            self.sgd_step()
        else:
            for member in self.population.members:
                if member.active:
                    member.optimizer.step()
        self.solo = False
        return loss

    def sgd_step(self) -> None:
        """All members' torch SGD steps without momentum as one op per stacked tensor: p -= lr * (g + wd * p),
        torch's SGD arithmetic with each member's own lr and weight decay (a stopped member's lr is 0). Torch's SGD
        keeps no state without momentum, so the members' state_dicts are what stepping them would leave."""
        rates = tuple(
            (g["lr"] if m.active else 0.0, g["weight_decay"])
            for m in self.population.members
            for g in m.optimizer.param_groups
        )
        if rates != self._sgd_rates:  # set once per schedule change, not per step
            self._sgd_rates = rates
            lr, self._wd = torch.tensor(rates, device=self.population.device).T
            self._minus_lr = -lr
            self._decay = any(wd for _, wd in rates)  # read here, on the host: no per-step device sync
        for stacked in self.stacked.stacked_params.values():
            if stacked.grad is None:  # not used by the loss: torch's SGD skips it too
                continue
            shape = (-1, *[1] * (stacked.dim() - 1))
            update = stacked.grad + self._wd.view(shape) * stacked.detach() if self._decay else stacked.grad
            stacked.detach().addcmul_(update, self._minus_lr.view(shape))  # one pass: p += (-lr) * update

    def state_dict(self) -> dict:
        return {"members": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        for optimizer, state in zip(self.optimizers, state_dict["members"]):
            optimizer.load_state_dict(state)
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]  # torch made new group dicts


def is_plain_sgd(optimizer: torch.optim.Optimizer) -> bool:
    return type(optimizer) is torch.optim.SGD and all(
        not g["momentum"] and not g["maximize"] for g in optimizer.param_groups
    )


class MemberMinibatches(IterableDataset):
    """The members' training batches: each data seed's minibatch stream (a pure function of the step, as a solo
    run's), (k * B, ...) when the members share one seed, else (k * B, N, ...) with member i's in column i."""

    def __init__(self, examples, streams: list[MinibatchStream], feeds: list[int]):
        self.examples, self.streams, self.feeds = examples, streams, feeds

    def __iter__(self):
        for indices in zip(*self.streams):
            pairs = [self.examples[i] for i in indices]
            if len(pairs) == 1:
                yield pairs[0]
            else:
                yield tuple(torch.stack([p[j] for p in pairs], dim=1)[:, self.feeds] for j in (0, 1))


class PopulationData(pl.LightningDataModule):
    """The members' data: one corpus (the population's members share the split), each seed's minibatch order."""

    def __init__(self, members: list[Member]):
        super().__init__()
        self.first = members[0].datamodule
        self.seeds = sorted({m.datamodule.seed for m in members})
        self.feeds = [self.seeds.index(m.datamodule.seed) for m in members]
        self.source = self.first.source

    def train_dataloader(self) -> DataLoader:
        first, plan = self.first, self.first.steps_per_call
        at = lambda: self.trainer.global_step  # read when iteration starts: after a resume's restore
        streams = [MinibatchStream(first.num_train_examples, first.batch_size, plan, 0, s, at) for s in self.seeds]
        return DataLoader(MemberMinibatches(first.train_examples, streams, self.feeds), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return self.first.val_dataloader()


class MemberLoggers(Logger):
    """The population's logger: `members/<i>/<metric>` goes to member i's own loggers as `<metric>`; each member's
    loggers are its own runs, started and finished by the member (member.py)."""

    def __init__(self, members: list[Member]):
        super().__init__()
        self.members = members

    @property
    def name(self) -> str:
        return "members"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        routed: dict[int, dict] = {}
        for key, value in metrics.items():
            prefix, _, rest = key.partition("/")
            index, _, name = rest.partition("/")
            if prefix == "members" and name:
                routed.setdefault(int(index), {})[name] = value
        for index, values in routed.items():
            for logger in self.members[index].loggers:
                logger.log_metrics(values, step=step)

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass  # each member's final report logs its own

    def save(self) -> None:
        for member in self.members:
            if member.active:
                for logger in member.loggers:
                    logger.save()


class MemberCheckpointIO(AtomicCheckpointIO):
    """Writes each member's own checkpoint from the population's (what Lightning's trainer.save_checkpoint builds):
    a save with `storage_options={"member": i}` is member i's; any other save at a path under the population's
    root dir (the first member's job dir, the Trainer's default_root_dir) is every training member's, at the same
    place in its own job dir (elsewhere: the path with the member's dir name added before the suffix)."""

    def __init__(self, population: "Population"):
        super().__init__()
        self.population = population

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path, members = Path(path), self.population.members
        if storage_options and "member" in storage_options:
            targets = [(members[storage_options["member"]], path)]
        elif path.is_relative_to(self.population.root):
            targets = [(m, m.out_dir / path.relative_to(self.population.root)) for m in self.population.active]
        else:
            targets = [
                (m, path.with_name(f"{path.stem}-{m.out_dir.name}{path.suffix}")) for m in self.population.active
            ]
        for member, target in targets:
            save_atomically(self.member_checkpoint(checkpoint, members.index(member)), target)

    def member_checkpoint(self, checkpoint: dict, index: int) -> dict:
        """A run's checkpoint: what sample.py, eval.py and a resume read, with copies of the member's rows (torch.save
        of a row view writes the whole stacked storage: every member's weights in each member's file)."""
        member = self.population.members[index]
        own = {
            k: checkpoint[k] for k in ("epoch", "global_step", "pytorch-lightning_version", "loops") if k in checkpoint
        }
        own["state_dict"] = {name: tensor.clone() for name, tensor in member.module.state_dict().items()}
        if "optimizer_states" in checkpoint:
            own["optimizer_states"] = [checkpoint["optimizer_states"][0]["members"][index]]
            own["lr_schedulers"] = []
        own["callbacks"] = {
            **checkpoint.get("callbacks", {}),
            **{c.state_key: c.state_dict() for c in member.callbacks},
        }
        own["population_member"] = member.book()
        member.module.on_save_checkpoint(own)  # the model config and vocabulary: what rebuilds the net alone
        return own

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        """The population's checkpoint: Lightning's loop state from `path` (a member's file: the same for every
        member), the members' weights and optimizer states as each member loaded its own (member.set_up)."""
        checkpoint = read_checkpoint(path)
        module = self.population.module
        ours = {callback.state_key for callback in self.population.trainer.callbacks}
        return {
            **checkpoint,
            # the population's own callbacks' states; each member's (its diagnostics' history) it loaded itself
            "callbacks": {k: v for k, v in (checkpoint.get("callbacks") or {}).items() if k in ours},
            "state_dict": module.state_dict(),
            "optimizer_states": [{"members": [m.optimizer.state_dict() for m in self.population.members]}],
            "lr_schedulers": [],
        }


class PopulationDirs(resume.JobDirs):
    """What resume.fit records and says when a population stops: its training members, its sweep command."""

    def __init__(self, population: "Population"):
        members = population.members
        super().__init__(
            [m.out_dir for m in members],
            who=f"population of {population.size} ",
            saved="every member's checkpoint saved",
            signals=False,  # the population's StopFlag (its own handlers, or its parent process's)
        )
        self.population = population

    @property
    def resume(self) -> str:
        return sweep_resume_command([m.out_dir for m in self.population.members])

    def dirs(self) -> list[Path]:
        return [m.out_dir for m in self.population.active]

    def cannot_write(self, err: OSError, step: int) -> Exception:
        """Every member still training ends with its own line (Population.cannot_write)."""
        self.population.stopped_at = step
        for member in self.population.active:
            with member.logging_to_train_log():
                member.fail(self.population.cannot_write(err, member))
        return MembersEnded()


class MembersEnded(Exception):
    """Every member has its result already (each ended with its own line)."""


class Population(pl.Callback):
    """A group of members trained as one by the one Trainer (`fit`), and the callback that keeps each a job."""

    def __init__(
        self,
        members: list[Member],
        device: torch.device,
        stop: StopFlag | None = None,
        before: "Population | None" = None,
    ):
        """`before`: the population these members trained in until it repacked them (`fit`): its size, its wall
        time and its PBT search space carry on."""
        self.members, self.device = members, device
        self.size = before.size if before else len(members)  # the population_size each member reports
        self.seconds_before = before.seconds_before + before.seconds if before else 0.0
        self.seconds = 0.0
        self.repacking = False
        self.root = members[0].out_dir
        self.max_steps = members[0].cfg.trainer.max_steps
        # Why to stop early: this population's own, with its own signal handlers, or the one shared by populations
        # trained side by side in several processes (population/processes.py), whose handlers are their parent's.
        self.stop, self.owns_stop = (StopFlag(), True) if stop is None else (stop, False)
        if before is not None:  # a repacked population: the same flag, and whoever held its signal handlers holds them
            self.stop, self.owns_stop = before.stop, before.owns_stop
        self.stopped_at = members[0].start_step
        self.module = PopulationLM(self)
        self.trainer: pl.Trainer | None = None
        self.pbt = PBT(self) if members[0].cfg.get("pbt") else None  # exploit and explore (pbt.py)
        if self.pbt and before and before.pbt:
            self.pbt.space = before.pbt.space  # the sweep's values, not only the survivors'

    def train(self) -> None:
        """fit, and fit the members still training again as a smaller population each time it repacks them."""
        # the handlers span every fit and the repacks between them: a signal during a repack stops it too
        with stopping_on_signals(self.stop) if self.owns_stop else contextlib.nullcontext():
            self.train_repacking()

    def train_repacking(self) -> None:
        population, ckpt_path = self, self.members[0].cfg.get("ckpt_path")
        while True:
            survivors = population.fit(ckpt_path)
            if not survivors:
                return
            log.info(
                "population of %d: %d members ended; the %d still training go on as a population of %d from step %d",
                len(population.members),
                len(population.members) - len(survivors),
                len(survivors),
                len(survivors),
                population.trainer.global_step,
            )
            ckpt_path = str(survivors[0].out_dir / "checkpoints" / "last.ckpt")  # Lightning's loop state: every one's
            population = Population(survivors, self.device, self.stop, before=population)

    @property
    def active(self) -> list[Member]:
        return [m for m in self.members if m.active]

    def next_hooked_step(self, step: int) -> float:
        """The first step >= `step` at which a member's step callback is due (inf if none)."""
        return min([math.inf, *(clock.due_step for m in self.active for clock in m.clocks)])

    def fit(self, ckpt_path: str | None) -> list[Member]:
        """Train until max_steps, every member stopped, or a signal; every member's result is set at the end. Or,
        where enough members ended that their rows cost more than a restart (`repack`), until then: returns the
        members still training (each saved), which `train` fits again without the others' rows."""
        first = self.members[0]
        for index, member in enumerate(self.members):
            member.save_to = lambda path, i=index: self.trainer.save_checkpoint(
                path, weights_only=False, storage_options={"member": i}
            )
        self.trainer = build(
            first.cfg.trainer,
            "trainer",
            callbacks=[self, *first.population_callbacks],
            logger=[MemberLoggers(self.members)],
            plugins=[MemberCheckpointIO(self)],
            enable_checkpointing=False,  # the members' best checkpoints are this callback's (Member.validated)
            **first.module.engine.plan.trainer_arguments(first.cfg.trainer),
        )
        self.dirs = PopulationDirs(self)  # what resume.fit and `interrupted` say and record of a stop
        with console.quiet_population_restore():
            try:
                segment = resume.fit(
                    self.trainer,
                    self.module,
                    PopulationData(self.members),
                    ckpt_path,
                    self.root,
                    self.dirs,
                )
            except MembersEnded:
                return []
            except TrainingInterrupted as err:  # SIGTERM, which Lightning stops the fit on: every member saved
                for member in self.active:
                    member.release(err)
                raise
        step, self.seconds = self.trainer.global_step, segment.seconds
        if self.stop.requested:
            self.interrupted(step, segment.seconds)
        if self.repacking and self.active and step < self.max_steps:
            return self.active
        for member in self.active:
            self.finish(member, step, self.seconds_before + segment.seconds)
        return []

    # The callback's hooks: what makes each member a job.

    def on_train_start(self, trainer, pl_module) -> None:
        self.started = time.perf_counter()
        for member in self.active:
            member.trainer.global_step = trainer.global_step  # a repacked population starts where it stopped
            member.start_callbacks()

    def on_train_batch_end(self, trainer, *args) -> None:
        self.stopped_at = trainer.global_step  # where a failed save or log write stopped it
        if self.stop.requested or not self.active:
            trainer.should_stop = True

    def on_validation_end(self, trainer, pl_module) -> None:
        """Each member's val loss (logged by PopulationLM.validation_step), its best checkpoint, and early stopping
        or its Optuna trial's pruning where its config asks for it: a stopped member ends with its final report."""
        if trainer.sanity_checking:
            return
        step = trainer.global_step
        vals = {
            i: float(trainer.callback_metrics[f"members/{i}/val/loss"]) for i, m in enumerate(self.members) if m.active
        }
        for i, member in enumerate(self.members):
            if not member.active:
                continue
            val = vals[i]
            with member.logging_to_train_log():
                log.info("step %d: val loss %.4f", step, val)
                stop = member.validated(val, step) and step < self.max_steps
                if stop:
                    log.info("early stopping: no better val loss in %d validations", member.stale_validations)
                elif member.pruning is not None:  # its Optuna trial's pruner (callbacks/pruning.py) may stop it
                    stop = member.pruning.report(step, val)
            if stop:
                self.finish(member, step, self.seconds_before + time.perf_counter() - self.started)
        if self.pbt is not None and self.pbt.due(step):
            self.pbt.round(step, {i: v for i, v in vals.items() if self.members[i].active}, trainer)
        if not self.active:
            trainer.should_stop = True
        elif self.repack_due(step):  # stop here; `train` fits the others again, without the ended members' rows
            self.repacking = trainer.should_stop = True

    def repack_due(self, step: int) -> bool:
        """Whether to drop the ended members' rows (pruned, stopped early, diverged): they cost every step as much
        as a training member's. A restart (a new Trainer, every member's checkpoint) costs about a second: worth it
        once a quarter of the rows are idle, with steps still to go."""
        ended = len(self.members) - len(self.active)
        return ended >= max(1, len(self.members) // 4) and step < self.max_steps and not self.stop.requested

    def diverged(self, member: Member, why: str) -> None:
        last = member.out_dir / "checkpoints" / "last.ckpt"
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was saved before it"
        with member.logging_to_train_log():
            member.fail(TrainingDiverged(f"{why}; {kept}"))

    def cannot_write(self, err: OSError, member: Member) -> UserError:
        """resume.cannot_write's line for the member whose file it was; the others say whose write stopped them."""
        if err.filename and Path(err.filename).is_relative_to(member.out_dir):
            return resume.cannot_write(err, self.stopped_at, member.out_dir)
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
                member.finish(step, seconds, self.size, {"pbt": self.pbt.summary(member)} if self.pbt else None)
            except UserError as err:
                member.fail(err)
            except OSError as err:  # its summary.json or a checkpoint on a full disk
                member.fail(self.cannot_write(err, member))

    def interrupted(self, step: int, seconds: float) -> None:
        """A stop asked through the StopFlag (Ctrl-C, SIGUSR2, or the parent's signal in a worker): resume.fit has
        saved every training member's last.ckpt."""
        command = self.dirs.resume
        if not self.active:  # the signal came after every member had ended (stopped early, failed): nothing stopped
            raise TrainingInterrupted(
                f"{self.stop.requested} after every member of the population of {self.size} "
                f"had ended: their results are kept. Continue the sweep with: {command}",
                exit_code=self.stop.exit_code,
            )
        where = self.dirs.where(step, self.max_steps)
        error = TrainingInterrupted(
            f"{self.stop.requested}: {where}. Resume with: {command}", exit_code=self.stop.exit_code
        )
        for member in self.active:
            resume.record_interrupted_segment(self.trainer, self.module, seconds, member.out_dir)
            member.release(error)
        if self.owns_stop:  # side by side, the handlers' process hands over, once (processes.train_side_by_side)
            self.stop.hand_over(where, command)
        raise error
