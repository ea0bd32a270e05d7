"""The one LightningModule: wraps any model from models/, scores every architecture the same way."""

import pytorch_lightning as pl
import torch

from makemore_lab.errors import TrainingDiverged
from makemore_lab.losses import batch_loss, training_loss
from makemore_lab.schedules import constant


class CharLM(pl.LightningModule):
    """Next-character cross-entropy (nats) for any `net` mapping (B, block_size) contexts to (B, V) logits.

    Each Lightning batch holds `steps_per_call` minibatches of `batch_size` examples, and one training_step makes
    that many optimizer steps (manual optimization). At the lectures' model sizes a step costs a fraction of a
    millisecond and Lightning's per-batch machinery about a millisecond; doing many steps per call amortises it.
    Semantics stay those of one step per minibatch: the same minibatches in the same order, `global_step` counts
    optimizer steps, the schedule sets the lr of every optimizer step, and training stops exactly at max_steps.
    The step calls torch directly (backward, optimizer.step), so Lightning's per-step hooks (on_before_backward,
    on_after_backward, on_before_optimizer_step) do not run, nor does its fp16 gradient scaler: use 32-bit or
    bf16 precision. Under DDP train.py sets steps_per_call to 1 (DDP syncs gradients once per forward call).

    Args:
        net: the architecture (an nn.Module from makemore_lab.models).
        optimizer: a partial optimizer, completed here with the parameters (configs/optimizer/).
        schedule: a partial from makemore_lab.schedules (step -> lr multiplier), completed with trainer.max_steps;
            None for a constant lr.
        batch_size: examples per optimizer step.
        checkpoint_meta: what a checkpoint needs to rebuild `net` alone (config, vocabulary), stored in every save.
        all_positions: train on every position of each example (sequence models, data.train_on=items): the
            training batch holds whole items and the loss is the mean over all their characters.
    """

    def __init__(
        self,
        net: torch.nn.Module,
        optimizer,
        schedule=None,
        batch_size: int = 32,
        checkpoint_meta: dict | None = None,
        all_positions: bool = False,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.net = net
        self.optimizer_factory = optimizer
        self.schedule_factory = schedule
        self.batch_size = batch_size
        self.checkpoint_meta = dict(checkpoint_meta or {})
        self.all_positions = all_positions
        self.initial_loss: float | None = None  # loss of the very first step, for the lecture's ln(V) check
        self.lr_multiplier = constant(0)  # replaced in configure_optimizers, once max_steps is known
        self._lr_factor: float | None = None  # the multiplier currently applied to the optimizer

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.net(idx)

    def training_step(self, batch, batch_idx):
        x, y = batch  # steps_per_call full minibatches (see data.MinibatchStream)
        minibatches = list(zip(x.split(self.batch_size), y.split(self.batch_size)))
        first_step = self.global_step
        losses = self._optimizer_steps(minibatches[: self.trainer.max_steps - first_step], first_step)
        if losses is None:
            return None
        finite = torch.isfinite(losses)
        if not finite.all():  # one check per call: no per-step sync with an accelerator
            bad = int((~finite).nonzero()[0])
            raise TrainingDiverged(
                f"the loss became {losses[bad].item()} at step {first_step + bad}: training diverged "
                "(a lower optimizer.lr usually helps)"
            )
        # Logged once per call, against the optimizer step (the "step" key), not Lightning's batch counter.
        self.log("train/loss", losses[-1], prog_bar=True)
        self.log("lr", self.optimizers().optimizer.param_groups[0]["initial_lr"] * self.lr_multiplier(self.global_step))
        self.log("step", float(self.global_step))
        return losses[-1]

    def _optimizer_steps(self, minibatches, step: int) -> torch.Tensor | None:
        """One optimizer step per minibatch; returns the losses, (steps,)."""
        # The torch optimizer itself, not Lightning's wrapper: its per-step hooks cost more than a small model's
        # whole step. torch's own optimizer step hooks still fire (the diagnostics use them).
        optimizer = self.optimizers().optimizer
        # Lightning's own step counter (trainer.global_step), advanced here as its optimizer wrapper would advance it.
        step_counter = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        distributed = self.trainer.world_size > 1
        losses = []
        for xb, yb in minibatches:
            self._apply_schedule(optimizer, step)
            loss = self._training_loss(xb, yb)
            if step == 0 and self.initial_loss is None:
                self.initial_loss = loss.item()  # one sync, on the first step only
            optimizer.zero_grad(set_to_none=True)
            if distributed:  # Lightning's backward arms DDP's gradient all-reduce (manual optimization)
                self.manual_backward(loss)
            else:
                loss.backward()
            optimizer.step()
            step_counter.increment_ready()
            step_counter.increment_completed()
            losses.append(loss.detach())
            step += 1
        return torch.stack(losses) if losses else None

    def _training_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return training_loss(self.net, x, y, self.all_positions)

    def _apply_schedule(self, optimizer, step: int) -> None:
        """Set the lr for `step`: a pure function of the step, so a resumed run needs no scheduler state."""
        factor = self.lr_multiplier(step)
        if factor != self._lr_factor:  # most schedules change rarely; writing every step would cost time
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
            self._lr_factor = factor

    def validation_step(self, batch, batch_idx):
        loss, scored = batch_loss(self.net, batch)
        # batch_size makes Lightning weight each batch by its size: the epoch value is the exact mean over the split.
        self.log("val/loss", loss, batch_size=scored, prog_bar=True)
        self.log("step", float(self.global_step), batch_size=scored)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])  # the base rate; saved with the optimizer state
        total_steps = self.trainer.max_steps
        self.lr_multiplier = self.schedule_factory(total_steps=total_steps) if self.schedule_factory else constant(total_steps)
        self._lr_factor = None
        return optimizer

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["makemore_lab"] = {**self.checkpoint_meta, "initial_loss": self.initial_loss}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.initial_loss = checkpoint.get("makemore_lab", {}).get("initial_loss")
