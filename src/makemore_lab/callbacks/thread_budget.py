"""ThreadBudget: a run under `threads: auto` keeps its fair share of the cores as other runs start and end."""

import time

import pytorch_lightning as pl
import torch

from makemore_lab.threads import RECOUNT_SECONDS, fair_share


class ThreadBudget(pl.Callback):
    """Recounts the live runs every few seconds of training and resizes torch's thread pool to the fair share."""

    def __init__(self, every_seconds: float = RECOUNT_SECONDS):
        self.every_seconds = every_seconds
        self._next = 0.0

    def on_train_batch_end(self, trainer, *args) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.every_seconds
            share = fair_share()
            if share != torch.get_num_threads():
                torch.set_num_threads(share)
