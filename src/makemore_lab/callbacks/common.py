"""What the diagnostics callbacks share: a clock on the real optimizer steps, TensorBoard's writers, validation.

Lightning's batch hooks cannot tell optimizer steps apart when one training_step makes several of them (see
module.py), so the callbacks count steps with torch's own optimizer hooks, which fire in any training loop.
They write straight to TensorBoard's SummaryWriter (not `pl_module.log`), against that step count, and only on
rank 0.
"""

from collections.abc import Callable

import pytorch_lightning as pl
import torch
from pytorch_lightning.core.optimizer import LightningOptimizer
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import summary

from makemore_lab.errors import UserError

StepHook = Callable[[torch.optim.Optimizer, int], None]


class StepClock:
    """Calls `before(optimizer, step)` just before optimizer step `step` (0-based) changes the weights, and
    `after(optimizer, step)` just after, through `register_step_pre_hook` / `register_step_post_hook`.

    The count starts at trainer.global_step (so it continues on resume) and advances after each step of the
    first optimizer (the CharLM has one). `next_due(step)` names the first step >= `step` at which the callback
    needs `before`/`after` (default: every step). On the other steps the hooks only count: a small model makes
    thousands of steps a second, and a Python call into the callback on each of them costs several percent.
    """

    def __init__(
        self,
        before: StepHook | None = None,
        after: StepHook | None = None,
        next_due: Callable[[int], float] | None = None,
    ):
        self.before, self.after = before, after
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


def next_multiple(step: int, n: int) -> int:
    """The first multiple of n that is >= step."""
    return -(-step // n) * n


def torch_optimizers(trainer: pl.Trainer) -> list[torch.optim.Optimizer]:
    return [opt.optimizer if isinstance(opt, LightningOptimizer) else opt for opt in trainer.optimizers]


def network(pl_module: pl.LightningModule) -> torch.nn.Module:
    """The architecture inside the LightningModule (CharLM keeps it as `net`): layer names are relative to it."""
    return getattr(pl_module, "net", pl_module)


def tensorboard_writers(trainer: pl.Trainer) -> list:
    """The SummaryWriters of the run's TensorBoard loggers; none on ranks other than 0."""
    if not trainer.is_global_zero:
        return []
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def find_callback(trainer: pl.Trainer, cls: type):
    return next((c for c in trainer.callbacks if isinstance(c, cls)), None)


class SummaryBatch:
    """One step's scalars, histograms and images, written to TensorBoard as a single event.

    SummaryWriter.add_scalar & co. write an event each, and an event's fixed cost (a hand-off to the writer
    thread, a CRC computed in pure Python) outweighs a small value's: one event for a measured step's ~20 values
    costs a third of ~20 events. The values are those add_scalar, add_histogram and add_image would write.
    """

    def __init__(self):
        self.values = []

    def scalar(self, tag: str, value: float) -> None:
        self.values.extend(summary.scalar(tag, value).value)

    def histogram(self, tag: str, values: torch.Tensor, bins: int = 30) -> None:
        """Binned by torch on the values' device: numpy's binning costs ~5x more, and bincount (unlike histc) is
        fast on the CPU and allowed under deterministic CUDA."""
        values = values.detach().float().flatten()
        low, high, total, squares = torch.stack([values.min(), values.max(), values.sum(), values.square().sum()]).tolist()
        if not high > low:  # all equal: one bucket
            edges, counts = [high], [values.numel()]
        else:
            index = ((values - low) * (bins / (high - low))).long().clamp_(0, bins - 1)
            counts = torch.bincount(index, minlength=bins).tolist()
            edges = [low + (high - low) * (i + 1) / bins for i in range(bins)]  # right edges, as TensorBoard wants
        self.values.extend(summary.histogram_raw(tag, low, high, values.numel(), total, squares, edges, counts).value)

    def image(self, tag: str, image: torch.Tensor) -> None:
        """A (height, width) image: uint8 in [0, 255] or float in [0, 1]."""
        self.values.extend(summary.image(tag, image, dataformats="HW").value)

    def write(self, writer, step: int) -> None:
        if self.values:
            writer.file_writer.add_summary(Summary(value=self.values), step)


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_fraction(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise UserError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)

