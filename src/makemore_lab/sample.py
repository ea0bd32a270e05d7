"""Sample items from a checkpoint: exactly num_samples lines on stdout, the novelty report on stderr."""

import sys

import torch
from omegaconf import DictConfig

from makemore_lab import config_schema
from makemore_lab.checkpoint import load_trained_net
from makemore_lab.data import read_items, split_items
from makemore_lab.errors import UserError, exit_on_user_error
from makemore_lab.sampling import generate


def training_items(meta: dict) -> set[str] | None:
    """The training split the checkpoint was trained on, rebuilt from its data config; None if the file is gone."""
    data = meta["data"]
    try:
        items = read_items(data["path"])
    except UserError:
        return None
    return set(split_items(items, data["train_fraction"], data["val_fraction"], data["split_seed"])[0])


@exit_on_user_error
def run(cfg: DictConfig) -> list[str]:
    config_schema.validate(cfg, config_schema.SAMPLE_RULES)
    net, vocab, meta = load_trained_net(cfg.ckpt_path)
    generator = torch.Generator().manual_seed(cfg.seed)
    items = generate(net, vocab, cfg.num_samples, meta["block_size"], generator, cfg.temperature, cfg.top_k, cfg.max_length)
    print("\n".join(items), flush=True)
    seen = training_items(meta)
    if seen is None:
        print("novelty unknown: the training data file is not available", file=sys.stderr)
    else:
        novel = sum(item not in seen for item in items)
        print(f"{novel}/{len(items)} samples are novel (not in the training split)", file=sys.stderr)
    return items
