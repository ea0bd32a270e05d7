"""The training engine: how one Lightning batch becomes optimizer steps. The only code that knows.

Contract (what a callback author can rely on; docs/callbacks.md has the long form):

- A Lightning training batch holds `k` minibatches and makes `k` optimizer steps, one per minibatch, in order.
  `k` is `steps_per_call` (default 200), lowered by `StepPlan` so that every interval counted in optimizer steps
  (`trainer.val_check_interval`, `trainer.log_every_n_steps`, any callback's `every_n_train_steps`) falls on a
  batch boundary, and set to 1 where per-step Lightning hooks are needed (DDP, `LearningRateMonitor`, a callback
  that overrides `on_before_backward`, `on_after_backward` or `on_before_optimizer_step`).
- `k == 1` is plain Lightning manual optimization: `manual_backward` and the `LightningOptimizer` step, so every
  per-step hook of Lightning's contract fires once per optimizer step, and gradient scaling is Lightning's own.
- `k > 1` is the fast path: torch's backward and optimizer step directly (Lightning's per-step hooks cost more
  than a lecture model's whole step), the precision plugin's gradient scaler where it has one (16-mixed on a GPU).
  Per step, torch's own optimizer step hooks fire (`register_step_pre_hook`/`register_step_post_hook`,
  wrapped by `makemore_lab.step_hooks.StepClock`) and `trainer.global_step` counts the step; the batch hooks
  (`on_train_batch_start/end`) fire once per k steps.
- Either way: `trainer.global_step` counts optimizer steps; the learning rate of step s is
  `base_lr * schedule(s)`, a pure function of the step, set right after step s - 1 (so between batches the
  optimizer holds the lr of the next step, as `LearningRateMonitor` expects); `trainer.gradient_clip_val` /
  `gradient_clip_algorithm` clip every step after unscaling and after the `on_before_optimizer_step` hooks, as
  Lightning documents; a non-finite loss stops training (checked once per batch: no per-step host sync).
"""

import functools
import logging
import math
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import LearningRateMonitor

from makemore_lab import console
from makemore_lab.errors import TrainingDiverged, UserError

log = logging.getLogger(__name__)

# Lightning hooks that fire once per optimizer step: a callback that overrides one needs one step per batch.
PER_STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")
ANOMALY = "returned nan values"  # torch.autograd anomaly mode's message for a NaN found in backward


@dataclass(frozen=True)
class StepPlan:
    """How many optimizer steps a Lightning batch holds, and what the Trainer is given for it."""

    steps_per_batch: int
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str = "norm"

    @classmethod
    def from_config(cls, cfg: DictConfig, callbacks: list[pl.Callback]) -> "StepPlan":
        trainer = cfg.trainer
        if trainer.get("accumulate_grad_batches", 1) != 1:
            raise UserError(
                "trainer.accumulate_grad_batches is not supported (each minibatch is one optimizer step): "
                "raise data.batch_size instead"
            )
        k, why = cfg.steps_per_call, None
        needs_per_step = [type(c).__name__ for c in callbacks if wants_every_step(c)]
        if "ddp" in str(trainer.get("strategy") or ""):
            k, why = 1, "DDP synchronises gradients once per Lightning batch"
        elif needs_per_step:
            k, why = 1, f"{', '.join(needs_per_step)} needs Lightning's per-step hooks"
        intervals = {f"trainer.{key}": trainer.get(key) for key in ("val_check_interval", "log_every_n_steps")}
        for name, node in (cfg.get("callbacks") or {}).items():
            if node and node.get("every_n_train_steps"):
                intervals[f"callbacks.{name}.every_n_train_steps"] = node.every_n_train_steps
        for name, interval in intervals.items():
            if interval % k:
                k, why = math.gcd(k, interval), f"{name}={interval} must fall on a Lightning batch boundary"
        if why and k != cfg.steps_per_call:  # the engine's business: train.log only, not the console
            log.info("steps_per_call %d -> %d: %s", cfg.steps_per_call, k, why, extra=console.TRAIN_LOG_ONLY)
        clip = trainer.get("gradient_clip_val")
        return cls(k, clip or None, trainer.get("gradient_clip_algorithm") or "norm")

    def trainer_arguments(self, trainer: DictConfig) -> dict:
        """Trainer arguments counted in Lightning batches (k optimizer steps each); clipping is the engine's own
        (Lightning refuses Trainer(gradient_clip_val) under manual optimization, which the engine uses)."""
        return {
            "val_check_interval": trainer.val_check_interval // self.steps_per_batch,
            "log_every_n_steps": trainer.log_every_n_steps // self.steps_per_batch,
            "gradient_clip_val": None,
            "gradient_clip_algorithm": None,
        }


def wants_every_step(callback: pl.Callback) -> bool:
    """Whether `callback` relies on a Lightning hook that only fires per optimizer step with one step per batch."""
    if isinstance(callback, LearningRateMonitor):  # logs at batch start against Lightning's batch counter
        return callback.logging_interval != "epoch"
    overridden = lambda name: getattr(type(callback), name) is not getattr(pl.Callback, name) or name in vars(callback)
    return any(overridden(name) for name in PER_STEP_HOOKS)


def step_counter(trainer: pl.Trainer):
    """A function that counts one optimizer step in `trainer.global_step`, as Lightning's optimizer wrapper does.

    The one line in the package that touches Lightning's loop state: its public way (LightningOptimizer.step)
    costs ~20% of a lecture model's step. tests/test_engine.py fails at once if a Lightning release changes it.
    """
    return functools.partial(trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress.increment_by, 1)


DIVERGENCE_FACTOR = 10


def divergence(losses: torch.Tensor, first_step: int, initial_loss: float | None) -> str | None:
    """Why the losses of steps first_step, first_step + 1, ... say training diverged, or None.

    Diverged: a loss that is not finite, or more than DIVERGENCE_FACTOR times the run's first loss. The second rule
    catches what stays finite: SGD at lr=100 keeps the lecture MLP's loss near 300 nats (90x ln V, far worse than
    its untrained first step) for thousands of steps without ever overflowing. A healthy run, even lecture 3's
    badly initialised one (first loss 27), never comes near ten times where it started.
    """
    bad = ~torch.isfinite(losses)
    limit = DIVERGENCE_FACTOR * initial_loss if initial_loss and math.isfinite(initial_loss) else None
    if limit is not None:
        bad |= losses > limit
    if not bad.any():
        return None
    index = int(bad.nonzero()[0])
    value = losses[index].item()
    what = (
        f"{value:.4g}, more than {DIVERGENCE_FACTOR}x the first step's {initial_loss:.4g},"
        if math.isfinite(value)
        else value
    )
    return (
        f"the loss became {what} at step {first_step + index}: training diverged (a lower optimizer.lr usually helps)"
    )


def objective(loss: torch.Tensor) -> torch.Tensor:
    """What backward differentiates: the loss, or the sum of a population's members' losses (N,), which gives each
    member the gradient of its own loss (member i's loss depends on member i's weights only)."""
    return loss if loss.dim() == 0 else loss.sum()


class StepEngine:
    """Runs the optimizer steps of one Lightning batch for `module` (a LightningModule with manual optimization).

    `loss_fn(x, y)` is the minibatch loss (or each member's, (N,), for a population); `lr_multiplier(step)` the
    schedule (a number, or a tuple with one per param group: a population's members each follow their own).
    """

    def __init__(self, plan: StepPlan, loss_fn, lr_multiplier):
        self.plan = plan
        self.loss_fn = loss_fn
        self.lr_multiplier = lr_multiplier
        self._factor: float | None = None  # the multiplier the optimizer's lr holds now

    def set_lr(self, optimizer: torch.optim.Optimizer, step: int, base_changed: bool = False) -> None:
        """The lr of `step`: a pure function of the step, so a resumed run needs no scheduler state. `base_changed`:
        a group's base lr (`initial_lr`) changed since (a resume reloaded it, PBT explored it): write every lr."""
        factor = self.lr_multiplier(step)  # one number, or one per param group (a population's members)
        if factor != self._factor or base_changed:  # most schedules change rarely: writing every step costs time
            factors = factor if isinstance(factor, tuple) else [factor] * len(optimizer.param_groups)
            for group, each in zip(optimizer.param_groups, factors):
                group["lr"] = group["initial_lr"] * each
            self._factor = factor

    def run_batch(self, module: pl.LightningModule, x: torch.Tensor, y: torch.Tensor, batch_size: int):
        """The steps of one batch (stopping at trainer.max_steps); returns their losses (steps,), or None."""
        trainer = module.trainer
        first = trainer.global_step
        steps = min(len(y) // batch_size, trainer.max_steps - first)
        minibatches = list(zip(x.split(batch_size)[:steps], y.split(batch_size)[:steps]))
        if not minibatches:
            return None
        try:
            if self.plan.steps_per_batch == 1:
                losses = [self._lightning_step(module, xb, yb) for xb, yb in minibatches]
            else:
                losses = self._fast_steps(module, minibatches, first)
        except RuntimeError as err:  # trainer.detect_anomaly (debug=fast): torch's NaN report is a divergence too
            if ANOMALY not in str(err):
                raise
            raise TrainingDiverged(
                f"anomaly detection: {str(err).splitlines()[0]} at step {trainer.global_step}: "
                "training diverged (a lower optimizer.lr usually helps)"
            ) from None
        losses = torch.stack(losses)  # (steps,), or (steps, N) for a population's N members
        module.check_divergence(losses, first)  # one check per batch: no per-step sync
        return losses

    def _lightning_step(self, module, xb, yb) -> torch.Tensor:
        """Lightning's own manual-optimization step: every per-step hook fires; clipping runs in the module's
        on_before_optimizer_step (see clip), after the callbacks' and after unscaling, as Lightning orders it."""
        optimizer = module.optimizers()
        loss = self.loss_fn(xb, yb)
        optimizer.zero_grad(set_to_none=True)
        module.manual_backward(objective(loss))
        optimizer.step()
        self.set_lr(optimizer.optimizer, module.trainer.global_step)
        return loss.detach()

    def _fast_steps(self, module, minibatches, step: int) -> list[torch.Tensor]:
        """torch's backward and step per minibatch; everything looked up once per batch, not once per step."""
        optimizer = module.optimizers().optimizer  # torch's: its own step hooks fire, Lightning's do not
        scaler = getattr(module.trainer.precision_plugin, "scaler", None)  # 16-mixed on a GPU
        count_step = step_counter(module.trainer)
        clip = self.plan.gradient_clip_val
        losses = []
        for xb, yb in minibatches:
            loss = self.loss_fn(xb, yb)
            optimizer.zero_grad(set_to_none=True)
            (scaler.scale(objective(loss)) if scaler else objective(loss)).backward()
            if clip:
                if scaler:
                    scaler.unscale_(optimizer)
                self.clip(module, optimizer)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            count_step()
            step += 1
            self.set_lr(optimizer, step)
            losses.append(loss.detach())
        return losses

    def clip(self, module: pl.LightningModule, optimizer) -> None:
        """trainer.gradient_clip_val/algorithm, through Lightning's public clip_gradients (precision-aware)."""
        if self.plan.gradient_clip_val:
            module.clip_gradients(optimizer, self.plan.gradient_clip_val, self.plan.gradient_clip_algorithm)
