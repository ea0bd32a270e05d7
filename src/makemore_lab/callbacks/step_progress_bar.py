"""Lightning's tqdm progress bar, counting optimizer steps up to trainer.max_steps instead of batches per epoch."""

import sys

from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm


def in_jupyter() -> bool:
    """True inside a Jupyter kernel (a notebook, nbclient), where stdout is a cell's output, not a terminal."""
    if "IPython" not in sys.modules:  # never imports IPython itself
        return False
    shell = sys.modules["IPython"].get_ipython()
    return shell is not None and "IPKernelApp" in shell.config


class StepProgressBar(TQDMProgressBar):
    """One bar for the whole run: `Training 12000/200000 [...] train/loss=2.1, val/loss=2.2`.

    A Lightning batch holds several optimizer steps (engine.py) and the data stream has no epochs, so the stock
    bar's "batch 45/115 of epoch 3" says little; the step count is what `trainer.max_steps` is given in.
    Only public API: the stock bar (made at on_train_start) is reset to count steps, and refreshed every
    `refresh_rate` batches. The training stream is endless, so there is one epoch.
    """

    def init_validation_tqdm(self) -> Tqdm:
        """In a notebook no validation bar: nested under the step bar, tqdm moves the cursor with ANSI codes, which
        a cell's output (without ipywidgets) prints as stray lines; the step bar shows val/loss after each one."""
        if in_jupyter():
            return Tqdm(disable=True)
        return super().init_validation_tqdm()

    def on_train_epoch_start(self, trainer, *_) -> None:
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps)
        bar.initial = 0
        bar.n = trainer.global_step
        bar.set_description("Training")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.train_progress_bar
        if self.is_disabled:
            return
        if (batch_idx + 1) % self.refresh_rate == 0 or trainer.global_step >= trainer.max_steps:
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()
