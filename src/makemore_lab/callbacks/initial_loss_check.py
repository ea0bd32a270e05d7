"""Lecture 3's first check: before it learns anything, a network should be unsure, its loss about ln(vocab_size).

A loss far above that means the network starts confidently wrong: its output logits are too large, and the first
steps are spent only on shrinking them (lecture 3's "hockey stick" loss curve).
"""

import logging
import math

import pytorch_lightning as pl

from makemore_lab.callbacks.common import StepClock, check_fraction, tensorboard_writers

log = logging.getLogger(__name__)


def check_initial_loss(loss: float, vocab_size: int, tolerance: float) -> tuple[bool, str]:
    """(ok, message): is the loss of step 0 within `tolerance` (a fraction) of ln(vocab_size)?"""
    expected = math.log(vocab_size)
    ratio = loss / expected
    if ratio > 1 + tolerance:
        return False, (
            f"initial loss {loss:.4f} is {ratio:.1f}x ln({vocab_size}) = {expected:.4f}: the network starts "
            "confidently wrong (its output logits are too large; lecture 3 scales the output layer's weights down "
            "and zeroes its bias, which model.init=kaiming does)"
        )
    if ratio < 1 - tolerance:
        return False, (
            f"initial loss {loss:.4f} is more than {tolerance:.0%} below ln({vocab_size}) = {expected:.4f}: "
            "the network predicts well before any training (do the inputs leak the targets?)"
        )
    return True, f"initial loss {loss:.4f} is within {tolerance:.0%} of ln({vocab_size}) = {expected:.4f}"


class InitialLossCheck(pl.Callback):
    """Right after optimizer step 0: the TensorBoard scalars initial_loss/measured and initial_loss/expected
    (ln V), and a warning when the two differ by more than `tolerance` (a fraction of ln V).

    Reads the step-0 loss from `pl_module.initial_loss` and V from the datamodule's `vocab_size`. A resumed run
    (which does not start at step 0) is not checked again. Rank 0 only.
    """

    def __init__(self, tolerance: float = 0.1):
        self.tolerance = check_fraction(tolerance, "callbacks.initial_loss_check.tolerance")
        self.clock = StepClock(after=self._after_step, next_due=lambda step: 0 if step == 0 else math.inf)
        self.result: dict | None = None
        self._trainer = self._module = None

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and trainer.global_step == 0:
            self._trainer, self._module = trainer, pl_module
            self.clock.start(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.clock.stop()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.clock.stop()

    def _after_step(self, optimizer, step: int) -> None:
        if step != 0 or self.result is not None:
            return
        loss = getattr(self._module, "initial_loss", None)
        vocab_size = getattr(self._trainer.datamodule, "vocab_size", None)
        if loss is None or vocab_size is None:
            return
        ok, message = check_initial_loss(loss, vocab_size, self.tolerance)
        self.result = {"ok": ok, "initial_loss": loss, "expected": math.log(vocab_size), "message": message}
        for writer in tensorboard_writers(self._trainer):
            writer.add_scalar("initial_loss/measured", loss, 0)
            writer.add_scalar("initial_loss/expected", math.log(vocab_size), 0)
        if not ok:
            log.warning(message)
