"""Lightning's tqdm progress bar, counting optimizer steps up to trainer.max_steps instead of batches per epoch."""

from pytorch_lightning.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """One bar for the whole run: `Training 12000/200000 [...] train/loss=2.1, val/loss=2.2`.

    A Lightning batch holds `steps_per_call` optimizer steps and an epoch is a pass over the training split, so the
    stock bar's "batch 45/115 of epoch 3" says little; the step count is what `trainer.max_steps` is given in.
    """

    def on_train_epoch_start(self, trainer, *_) -> None:
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.reset(total=trainer.max_steps)
        self.train_progress_bar.initial = trainer.global_step if trainer.current_epoch == 0 else 0
        self.train_progress_bar.n = trainer.global_step
        self.train_progress_bar.set_description("Training")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.train_progress_bar
        if bar is not None and self._should_update(batch_idx + 1, -1) or trainer.global_step >= trainer.max_steps:
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()
