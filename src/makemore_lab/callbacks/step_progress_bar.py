"""Lightning's tqdm progress bar, counting optimizer steps up to trainer.max_steps instead of batches per epoch; where
the output is not a terminal (a log file, CI, a notebook), one plain log line per validation instead."""

import logging
import sys
import time

from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm

log = logging.getLogger(__name__)


def in_jupyter() -> bool:
    """True inside a Jupyter kernel (a notebook, nbclient), where stdout is a cell's output, not a terminal."""
    if "IPython" not in sys.modules:  # never imports IPython itself
        return False
    shell = sys.modules["IPython"].get_ipython()
    return shell is not None and "IPKernelApp" in shell.config


def on_a_terminal() -> bool:
    """Where a bar redraws in place. Elsewhere tqdm's carriage returns and cursor moves (`ESC[A`) pile up as text:
    a log file or CI keeps every redraw, and a later log line starts on the bar's unfinished line."""
    return sys.stdout.isatty() and not in_jupyter()


class StepProgressBar(TQDMProgressBar):
    """One bar for the whole run: `Training 12000/200000 [...] train/loss=2.1, val/loss=2.2`.

    A Lightning batch holds several optimizer steps (engine.py) and the data stream has no epochs, so the stock
    bar's "batch 45/115 of epoch 3" says little; the step count is what `trainer.max_steps` is given in.
    Only public API: the stock bar (made at on_train_start) is reset to count steps, and refreshed every
    `refresh_rate` batches. The training stream is endless, so there is one epoch.

    Not on a terminal, no bar: after each validation one line `step 2000/20000: train/loss 2.41, val/loss 2.45
    (12 s)`, through logging (so it is in train.log too), and a last one when training ends between validations.
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, lines: bool | None = None) -> None:
        """lines: plain lines instead of a bar; None (default) = when stdout is not a terminal."""
        super().__init__(refresh_rate=refresh_rate, process_position=process_position)
        self._lines = lines
        self._started = 0.0
        self._last_line_step = -1

    @property
    def lines(self) -> bool:
        return (not on_a_terminal()) if self._lines is None else bool(self._lines)

    def init_train_tqdm(self) -> Tqdm:
        return Tqdm(disable=True) if self.lines else super().init_train_tqdm()

    def init_validation_tqdm(self) -> Tqdm:
        """No validation bar but on a terminal: nested under the step bar, tqdm moves the cursor with ANSI codes."""
        return Tqdm(disable=True) if self.lines else super().init_validation_tqdm()

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._started, self._last_line_step = time.perf_counter(), trainer.global_step

    def on_train_epoch_start(self, trainer, *_) -> None:
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps)
        bar.initial = 0
        bar.n = trainer.global_step
        bar.set_description("Training")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.train_progress_bar
        if self.is_disabled or self.lines:
            return
        if (batch_idx + 1) % self.refresh_rate == 0 or trainer.global_step >= trainer.max_steps:
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if self.lines and not trainer.sanity_checking and trainer.state.fn == "fit":
            self._line(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if self.lines and trainer.global_step != self._last_line_step:
            self._line(trainer, pl_module)

    def _line(self, trainer, pl_module) -> None:
        if self.is_disabled:
            return
        metrics = self.get_metrics(trainer, pl_module)
        shown = ", ".join(
            f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"
            for key, value in metrics.items()
            if "/" in key
        )  # train/loss, val/loss
        if "val/loss" not in metrics and trainer.global_step >= trainer.max_steps:
            shown += "; no validation ran (trainer.val_check_interval > trainer.max_steps): the exact val loss follows"
        seconds = time.perf_counter() - self._started
        log.info("step %d/%d: %s (%.0f s)", trainer.global_step, trainer.max_steps, shown or "no loss yet", seconds)
        self._last_line_step = trainer.global_step
