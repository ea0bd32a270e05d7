"""Test-only callbacks that record what a third-party callback sees, written to a JSON file at the end of training."""

import json
from collections import Counter
from pathlib import Path

import pytorch_lightning as pl
import torch


class HookCounter(pl.Callback):
    """Counts Lightning's per-step hooks, and the global_step each on_train_batch_end sees."""

    def __init__(self, out_file: str):
        self.out_file = Path(out_file)
        self.calls = Counter()
        self.batch_end_steps = []

    def on_train_batch_start(self, *args):
        self.calls["on_train_batch_start"] += 1

    def on_train_batch_end(self, trainer, *args):
        self.calls["on_train_batch_end"] += 1
        self.batch_end_steps.append(trainer.global_step)

    def on_before_backward(self, *args):
        self.calls["on_before_backward"] += 1

    def on_after_backward(self, *args):
        self.calls["on_after_backward"] += 1

    def on_before_optimizer_step(self, *args):
        self.calls["on_before_optimizer_step"] += 1

    def on_train_end(self, trainer, pl_module):
        self.out_file.write_text(json.dumps({"calls": self.calls, "batch_end_steps": self.batch_end_steps}))


class GradientProbe(pl.Callback):
    """Records, at every optimizer step, the gradient SGD actually applied: (weights before - after) / lr, by torch's
    step pre- and post-hooks (Lightning may clip inside optimizer.step(), after the pre-hooks): its total 2-norm and
    largest absolute value. Needs plain SGD (no momentum, no weight decay)."""

    def __init__(self, out_file: str):
        self.out_file = Path(out_file)
        self.norms, self.max_abs = [], []
        self._handles, self._before = [], []

    def on_train_start(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        optimizer = getattr(optimizer, "optimizer", optimizer)  # torch's, inside Lightning's wrapper
        self._handles = [optimizer.register_step_pre_hook(self._pre), optimizer.register_step_post_hook(self._post)]

    def _pre(self, optimizer, args, kwargs):
        self._before = [p.detach().clone() for group in optimizer.param_groups for p in group["params"]]

    def _post(self, optimizer, args, kwargs):
        lr = optimizer.param_groups[0]["lr"]
        params = [p for group in optimizer.param_groups for p in group["params"]]
        applied = [(b - p.detach()) / lr for b, p in zip(self._before, params)]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in applied]))))
        self.max_abs.append(max(float(g.abs().max()) for g in applied))

    def on_train_end(self, trainer, pl_module):
        for handle in self._handles:
            handle.remove()
        self.out_file.write_text(json.dumps({"norms": self.norms, "max_abs": self.max_abs}))
