"""The one LightningModule: wraps any model from models/, scores every architecture the same way."""

import logging

import pytorch_lightning as pl
import torch

from makemore_lab.engine import StepEngine, StepPlan, divergence
from makemore_lab.errors import TrainingDiverged
from makemore_lab.losses import batch_loss, training_loss
from makemore_lab.schedules import constant

log = logging.getLogger(__name__)


class CharLM(pl.LightningModule):
    """Next-character cross-entropy (nats) for any `net` of models/ (see its contract in models/__init__.py).

    Training is manual optimization run by engine.StepEngine: a Lightning batch holds `plan.steps_per_batch`
    minibatches of `batch_size` and makes one optimizer step per minibatch (engine.py states the contract).

    Args:
        net: the architecture (an nn.Module from makemore_lab.models).
        optimizer: a partial optimizer, completed here with the parameters (configs/optimizer/).
        schedule: a partial from makemore_lab.schedules (step -> lr multiplier), completed with trainer.max_steps;
            None for a constant lr.
        batch_size: examples per optimizer step.
        checkpoint_meta: what a checkpoint needs to rebuild `net` alone (config, vocabulary), stored in every save.
        all_positions: train on every position of each example (sequence models, data.train_on=items).
        plan: the engine's plan (steps per batch, clipping); one step per batch if None.
    """

    def __init__(
        self,
        net: torch.nn.Module,
        optimizer,
        schedule=None,
        batch_size: int = 32,
        checkpoint_meta: dict | None = None,
        all_positions: bool = False,
        plan: StepPlan | None = None,
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
        self.first_step = 0  # the step this fit started at (a resumed run's checkpoint step), set at train start
        self.engine = StepEngine(plan or StepPlan(1), self._minibatch_loss, constant(0))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.net(idx)

    def _minibatch_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = training_loss(self.net, x, y, self.all_positions)
        if self.initial_loss is None and self.global_step == 0:  # cheap test first: this runs every step
            self.initial_loss = loss.item()  # one sync, on the first step only
        return loss

    def training_step(self, batch, batch_idx):
        losses = self.engine.run_batch(self, *batch, self.batch_size)
        if losses is None:
            return None
        # Logged once per batch, against the optimizer step (the "step" key), not Lightning's batch counter.
        self.log("train/loss", losses[-1], prog_bar=True)
        self.log("lr", self.optimizers().optimizer.param_groups[0]["lr"])
        self.log("step", float(self.global_step))
        return losses[-1]

    def check_divergence(self, losses: torch.Tensor, first_step: int) -> None:
        """The engine's check of a batch's losses (steps,): a diverged run stops (a population stops a member)."""
        why = divergence(losses, first_step, self.initial_loss)
        if why:
            raise TrainingDiverged(why)

    def on_before_optimizer_step(self, optimizer) -> None:
        self.engine.clip(self, optimizer)  # one step per batch: Lightning calls this after unscaling

    def on_train_start(self) -> None:
        self.first_step = self.global_step
        self.start_optimizer(self.optimizers().optimizer, self.global_step)

    def start_optimizer(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """The config's base lr (a resumed run restored the checkpoint's), then the lr of `step`."""
        configured = getattr(self.optimizer_factory, "keywords", {}).get("lr")
        for group in optimizer.param_groups:  # a resumed run restored the checkpoint's base lr: the config's wins
            if configured is not None and group["initial_lr"] != configured:
                log.info(
                    "optimizer.lr %g (the checkpoint's) -> %g (this run's config), from step %d",
                    group["initial_lr"],
                    configured,
                    step,
                )
                group["initial_lr"] = configured
        self.engine.set_lr(optimizer, step)  # the first (or resumed) step's lr

    def validation_step(self, batch, batch_idx):
        loss, scored = batch_loss(self.net, batch)
        # batch_size makes Lightning weight each batch by its size: the epoch value is the exact mean over the split.
        self.log("val/loss", loss, batch_size=scored, prog_bar=True)
        self.log("step", float(self.global_step), batch_size=scored)

    def configure_optimizers(self):
        return self.make_optimizer(self.trainer.max_steps)

    def make_optimizer(self, total_steps: int) -> torch.optim.Optimizer:
        """The optimizer over the net's parameters, and the schedule completed with the run's total steps."""
        optimizer = self.optimizer_factory(params=self.parameters())
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])  # the base rate; saved with the optimizer state
        self.engine.lr_multiplier = (
            self.schedule_factory(total_steps=total_steps) if self.schedule_factory else constant(total_steps)
        )
        return optimizer

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["makemore_lab"] = {**self.checkpoint_meta, "initial_loss": self.initial_loss}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.initial_loss = checkpoint.get("makemore_lab", {}).get("initial_loss")
