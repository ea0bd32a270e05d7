"""Sample items from a checkpoint: exactly num_samples lines on stdout (streamed: any number of them in bounded
memory), the novelty report on stderr."""

import sys

import torch
from omegaconf import DictConfig, OmegaConf

from makemore_lab import commands, config_schema
from makemore_lab.checkpoint import checkpoint_datamodule, load_trained_net
from makemore_lab.data import Vocabulary
from makemore_lab.errors import UserError, exit_on_user_error
from makemore_lab.sampling import stream


def training_items(meta: dict, vocab: Vocabulary, path: str | None = None) -> set[str]:
    """The training split the checkpoint was trained on (the train split only), rebuilt from its data settings on
    the file the user names (data.path=; the packaged names.txt by default), never on a path read from the
    checkpoint; a UserError if that file is not the one trained on (its fingerprint)."""
    return set(checkpoint_datamodule(meta, vocab, path=path, exact=True, splits=("train",)).train_items)


@exit_on_user_error
def run(cfg: DictConfig) -> int:
    """Print the samples; returns how many are novel (-1 when unknown)."""
    commands.resolve_ckpt_path(cfg, "sample")  # a path, or `latest` (the default): the newest run's
    config_schema.validate(cfg, config_schema.SAMPLE_RULES)
    net, vocab, meta = load_trained_net(cfg.ckpt_path)
    try:
        seen = training_items(meta, vocab, OmegaConf.select(cfg, "data.path", default=None))
    except UserError as err:  # sampling needs no data: say why novelty is unknown, keep the samples
        seen, unknown = None, err
    generator = torch.Generator().manual_seed(cfg.seed)
    novel = 0
    for item in stream(
        net, vocab, cfg.num_samples, meta["block_size"], generator, cfg.temperature, cfg.top_k, cfg.max_length
    ):
        print(item)
        novel += seen is not None and item not in seen
    sys.stdout.flush()
    if seen is None:
        print(f"novelty unknown: {unknown}", file=sys.stderr)
        return -1
    print(f"{novel}/{cfg.num_samples} samples are novel (not in the training split)", file=sys.stderr)
    return novel
