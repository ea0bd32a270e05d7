"""Steady-state training speed: optimizer steps per second after a warm-up, for benchmarks and sweeps."""

import time

import pytorch_lightning as pl

from makemore_lab.errors import UserError


class Throughput(pl.Callback):
    """Times the optimizer steps between the first training call that ends past `warmup_steps` and the last one.

    Validation inside that window counts against the rate (it is part of training), start-up does not.
    Adds `steady_steps_per_second` to summary.json.
    """

    def __init__(self, warmup_steps: int = 100):
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise UserError(f"callbacks.throughput.warmup_steps must be a non-negative integer, got {warmup_steps!r}")
        self.warmup_steps = warmup_steps
        self.first: tuple[float, int] | None = None
        self.last: tuple[float, int] | None = None

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.warmup_steps:
            mark = (time.perf_counter(), trainer.global_step)
            self.first = self.first or mark
            self.last = mark

    def steps_per_second(self) -> float | None:
        if self.first is None or self.last[1] == self.first[1]:
            return None
        return (self.last[1] - self.first[1]) / (self.last[0] - self.first[0])

    def summary_fields(self) -> dict:
        return {"steady_steps_per_second": self.steps_per_second()}
