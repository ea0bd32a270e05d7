"""The one LightningModule: wraps any model from models/, scores every architecture the same way."""

import pytorch_lightning as pl
import torch
from torch.nn import functional as F
from torch.optim.lr_scheduler import LambdaLR


class CharLM(pl.LightningModule):
    """Next-character cross-entropy (nats) for any `net` mapping (B, block_size) contexts to (B, V) logits.

    Args:
        net: the architecture (an nn.Module from makemore_lab.models).
        optimizer: a partial optimizer, completed here with the parameters (configs/optimizer/).
        schedule: a partial from makemore_lab.schedules, completed with trainer.max_steps; None for a constant lr.
        checkpoint_meta: what a checkpoint needs to rebuild `net` alone (config, vocabulary), stored in every save.
    """

    def __init__(self, net: torch.nn.Module, optimizer, schedule=None, checkpoint_meta: dict | None = None):
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer
        self.schedule_factory = schedule
        self.checkpoint_meta = dict(checkpoint_meta or {})
        self.initial_loss: float | None = None  # loss of the very first step, for the lecture's ln(V) check

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.net(idx)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        if self.global_step == 0 and self.initial_loss is None:
            self.initial_loss = loss.item()  # one sync, on the first step only
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        # batch_size makes Lightning weight each batch by its size: the epoch value is the exact mean over the split.
        self.log("val/loss", F.cross_entropy(self.net(x), y), batch_size=len(y), prog_bar=True)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.schedule_factory is None:
            return optimizer
        scheduler = LambdaLR(optimizer, self.schedule_factory(total_steps=self.trainer.max_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["makemore_lab"] = {**self.checkpoint_meta, "initial_loss": self.initial_loss}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.initial_loss = checkpoint.get("makemore_lab", {}).get("initial_loss")


@torch.inference_mode()
def split_loss(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> float:
    """Mean cross-entropy of a whole split, in eval mode (BatchNorm uses its running statistics)."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    total = 0.0
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size].to(device), y[start : start + batch_size].to(device)
        total += F.cross_entropy(net(xb), yb, reduction="sum").item()
    net.train(was_training)
    return total / len(y)
