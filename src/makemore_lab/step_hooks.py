"""Per-optimizer-step data for callback authors: a clock on the real optimizer steps.

The training engine may make several optimizer steps per Lightning batch (`steps_per_call`), so Lightning's batch
hooks (`on_train_batch_end`, ...) do not fire once per step. What does, in any training loop:

- torch's own optimizer step hooks (`register_step_pre_hook` / `register_step_post_hook`), once per optimizer step;
- `trainer.global_step`, which counts optimizer steps (read it in any Lightning hook).

`StepClock` packages the first: start it in `on_train_start`, stop it in `on_train_end` / `on_exception`, and it
calls you just before and just after each optimizer step you ask for, with the step's number (0-based, continuing
from `trainer.global_step` on resume), and, if you want to see that step's forward pass (forward hooks), `arm`s
you before it. `pl_module.net` is the architecture (`network(pl_module)`).

    class EveryHundred(pl.Callback):
        def __init__(self):
            self.clock = StepClock(after=self.after, next_due=lambda step: next_multiple(step, 100))
        def on_train_start(self, trainer, pl_module):
            self.clock.start(trainer)
        def on_train_end(self, trainer, pl_module):
            self.clock.stop()
        def after(self, optimizer, step):
            ...  # the weights right after optimizer step `step`; its gradients are still in p.grad
"""

import math
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from pytorch_lightning.core.optimizer import LightningOptimizer

StepHook = Callable[[torch.optim.Optimizer, int], None]


class StepClock:
    """Calls `before(optimizer, step)` just before optimizer step `step` (0-based) changes the weights, and
    `after(optimizer, step)` just after, through `register_step_pre_hook` / `register_step_post_hook`.

    The count starts at trainer.global_step (so it continues on resume) and advances after each step of the
    first optimizer (the CharLM has one). `next_due(step)` names the first step >= `step` at which the callback
    needs `before`/`after` (default: every step). On the other steps the hooks only count: a small model makes
    thousands of steps a second, and a Python call into the callback on each of them costs several percent.

    `arm(step)` is called before the forward pass of each due step, once: right after the optimizer step before it
    (or at `start`, when the first step is due). Attach forward hooks there rather than in the previous step's
    `after`: that step need not be due, and a population (population/run.py) trains a member with its solo run's
    own step only on the due steps.
    """

    def __init__(
        self,
        before: StepHook | None = None,
        after: StepHook | None = None,
        next_due: Callable[[int], float] | None = None,
        arm: Callable[[int], None] | None = None,
    ):
        self.before, self.after, self.arm = before, after, arm
        self.next_due = next_due or (lambda step: step)
        self.step = 0
        self._due = 0.0
        self._handles = []
        self._counting = None

    def start(self, trainer: pl.Trainer) -> None:
        self.stop()
        self.step = trainer.global_step
        self._due = self.next_due(self.step)
        optimizers = torch_optimizers(trainer)
        for optimizer in optimizers:
            if self.before:
                self._handles.append(optimizer.register_step_pre_hook(self._pre))
            self._handles.append(optimizer.register_step_post_hook(self._post))
        self._counting = optimizers[0] if optimizers else None
        self._arm_if_due()

    @property
    def due_step(self) -> float:
        """The next step at which `before`/`after` will be called (inf: none, or the clock is not started)."""
        return self._due if self._handles else math.inf

    def count_to(self, step: int) -> None:
        """For an engine that made optimizer steps without `optimizer.step()` (a population's vectorised SGD step,
        population/run.py): the steps up to `step` are done. Never calls the hooks: the engine steps through the
        optimizer itself at every `due_step`."""
        if not self._handles:
            return
        if step < self.step or step > self._due:
            raise ValueError(f"StepClock.count_to({step}) from step {self.step}, due at {self._due}")
        advanced, self.step = step > self.step, step
        if advanced:
            self._arm_if_due()

    def stop(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _pre(self, optimizer, args, kwargs) -> None:
        if self.step >= self._due:
            self.before(optimizer, self.step)

    def _post(self, optimizer, args, kwargs) -> None:
        step = self.step
        if optimizer is self._counting:
            self.step = step + 1
        if step >= self._due:
            if self.after:
                self.after(optimizer, step)
            self._due = self.next_due(step + 1)
        if optimizer is self._counting:
            self._arm_if_due()

    def _arm_if_due(self) -> None:
        if self.arm and self._handles and self.step == self._due:
            self.arm(self.step)


def next_multiple(step: int, n: int) -> int:
    """The first multiple of n that is >= step."""
    return -(-step // n) * n


def torch_optimizers(trainer: pl.Trainer) -> list[torch.optim.Optimizer]:
    """The trainer's torch optimizers (Lightning's wrappers unwrapped): where the step hooks go."""
    return [opt.optimizer if isinstance(opt, LightningOptimizer) else opt for opt in trainer.optimizers]


def network(pl_module: pl.LightningModule) -> torch.nn.Module:
    """The architecture inside the LightningModule (CharLM keeps it as `net`): layer names are relative to it."""
    return getattr(pl_module, "net", pl_module)
