"""Evaluate a checkpoint on its data's validation and test splits (or on another file through data.path=)."""

from omegaconf import DictConfig

from makemore_lab.checkpoint import load_trained_net
from makemore_lab.data import CharDataModule
from makemore_lab.errors import exit_on_user_error
from makemore_lab.module import split_loss


@exit_on_user_error
def run(cfg: DictConfig) -> dict[str, float]:
    net, vocab, meta = load_trained_net(cfg.ckpt_path)
    data = {k: v for k, v in meta["data"].items() if k != "_target_"}
    if cfg.data.path is not None:
        data["path"] = cfg.data.path
    data["block_size"] = meta["block_size"]  # the model's context length is fixed by its weights
    datamodule = CharDataModule(**data, vocab=vocab)
    losses = {split: split_loss(net, datamodule.splits[split].x, datamodule.splits[split].y) for split in ("val", "test")}
    print(f"checkpoint: {cfg.ckpt_path}")
    for split, loss in losses.items():
        print(f"{split}_loss: {loss:.4f}")
    return losses
