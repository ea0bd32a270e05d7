"""Evaluate a checkpoint on its data's validation and test splits (or on another file through data.path=)."""

from omegaconf import DictConfig

from makemore_lab import allocator, commands, config_schema
from makemore_lab.checkpoint import checkpoint_datamodule, load_trained_net
from makemore_lab.errors import exit_on_user_error
from makemore_lab.losses import split_loss
from makemore_lab.models import scores_every_position


@exit_on_user_error
def run(cfg: DictConfig) -> dict[str, float]:
    commands.resolve_ckpt_path(cfg, "eval")  # a path, or `latest`: the newest run's
    config_schema.validate(cfg, config_schema.EVAL_RULES)
    allocator.keep_freed_memory()  # scoring a split frees and allocates the same batches' tensors
    net, vocab, meta = load_trained_net(cfg.ckpt_path)
    # Only the splits it reports; whole items for a model that scores every position (O(characters)).
    datamodule = checkpoint_datamodule(
        meta, vocab, path=cfg.data.path, splits=("val", "test"), whole_item_eval=scores_every_position(net)
    )
    losses = {split: split_loss(net, datamodule, split) for split in ("val", "test")}
    print(f"checkpoint: {cfg.ckpt_path}")
    for split, loss in losses.items():
        print(f"{split}_loss: {loss:.4f}")
    return losses
