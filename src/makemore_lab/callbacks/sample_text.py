"""What the model writes as it learns: generated items as text for the run's loggers, every N optimizer steps."""

import pytorch_lightning as pl
import torch

from makemore_lab.config_schema import check, positive_int
from makemore_lab.logging_media import RunLoggers, StepLog
from makemore_lab.sampling import generate
from makemore_lab.step_hooks import StepClock, network, next_multiple


class SampleText(pl.Callback):
    """Every `every_n_steps` optimizer steps, and at the end, `num_samples` generated items under the tag `samples`.

    Each time from the same seed, so successive entries differ only by what the model has learned. Sampling has
    its own random generator and puts the model back in training mode: training itself is unchanged. Rank 0 only.
    """

    def __init__(self, every_n_steps: int, num_samples: int = 10, seed: int = 0):
        self.every_n_steps = check(
            "callbacks.sample_text.every_n_steps", every_n_steps, "a positive integer", positive_int
        )
        self.num_samples = check("callbacks.sample_text.num_samples", num_samples, "a positive integer", positive_int)
        self.seed = seed
        # after step s, s + 1 steps are done: due at the steps s with s + 1 a multiple of every_n_steps
        self.clock = StepClock(
            after=self._after_step, next_due=lambda step: next_multiple(step + 1, self.every_n_steps) - 1
        )
        self._loggers: RunLoggers | None = None
        self._sampling = False  # whether a logger of the run keeps text (CSV alone does not: nothing to sample for)
        self._trainer = self._module = None
        self._written_step = -1

    def on_train_start(self, trainer, pl_module) -> None:
        self._loggers = RunLoggers(trainer)
        self._sampling = self._loggers.keep("text")
        if self._sampling:
            self._trainer, self._module = trainer, pl_module
            self.clock.start(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.clock.stop()
        if self._sampling and trainer.global_step != self._written_step:
            self._write(trainer.global_step)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.clock.stop()

    def _after_step(self, optimizer, step: int) -> None:
        if (step + 1) % self.every_n_steps == 0:
            self._write(step + 1)  # after step s, s + 1 steps are done: the global_step convention

    def _write(self, step: int) -> None:
        data = self._trainer.datamodule
        generator = torch.Generator().manual_seed(self.seed)
        samples = generate(network(self._module), data.vocab, self.num_samples, data.block_size, generator)
        text = "\n".join(f"    {s}" for s in samples)  # indented: a Markdown code block, one item a line
        record = StepLog()
        record.text("samples", text)
        self._loggers.write(record, step)
        self._written_step = step
