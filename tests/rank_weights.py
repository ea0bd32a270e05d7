"""A test-only callback for DDP runs: each rank writes its pid, world size, step and weights when training ends."""

import json
import os
from pathlib import Path

import pytorch_lightning as pl
import torch


class RankWeights(pl.Callback):
    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        weights = torch.cat([p.detach().flatten().double() for p in pl_module.parameters()])
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "world_size": trainer.world_size,
                    "step": trainer.global_step,
                    "weights": weights.tolist(),
                }
            )
        )
