"""checkpoints/last.ckpt, kept fresh so that a crash or a kill costs at most about a minute of training."""

import time
from pathlib import Path

import pytorch_lightning as pl

from makemore_lab.errors import UserError


class LastCheckpoint(pl.Callback):
    """Rewrites `<dirpath>/last.ckpt` every `every_seconds` of training and after each validation.

    Lightning's ModelCheckpoint ignores `train_time_interval` under manual optimization (which the module uses),
    hence this callback. trainer.save_checkpoint writes to a temporary file and moves it into place, so a kill
    during a save leaves the previous last.ckpt intact, never a truncated one.
    """

    def __init__(self, dirpath: str, every_seconds: float = 60.0):
        if not isinstance(every_seconds, (int, float)) or every_seconds <= 0:
            raise UserError(f"callbacks.last_checkpoint.every_seconds must be a positive number, got {every_seconds!r}")
        self.path = Path(dirpath) / "last.ckpt"
        self.every_seconds = every_seconds
        self._last_save_time = 0.0
        self._last_saved_step = -1

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_save_time = time.monotonic()

    def on_train_batch_end(self, trainer, *args) -> None:
        # Every rank must agree, since saving is a collective call under DDP.
        if trainer.strategy.broadcast(time.monotonic() - self._last_save_time >= self.every_seconds):
            self._save(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._save(trainer)

    def _save(self, trainer) -> None:
        if trainer.global_step != self._last_saved_step:
            trainer.save_checkpoint(self.path, weights_only=False)
            self._last_saved_step = trainer.global_step
        self._last_save_time = time.monotonic()
