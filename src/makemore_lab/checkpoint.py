"""Rebuild a trained model from a checkpoint file alone: the checkpoint carries the model config and vocabulary."""

import pickle
import zipfile
from pathlib import Path

import torch
from hydra.utils import instantiate

from makemore_lab.data import CharDataModule, Vocabulary
from makemore_lab.errors import UserError


def read_checkpoint(ckpt_path: str | Path) -> dict:
    """The checkpoint's contents, or a UserError saying why it cannot be used (missing, corrupt, not ours)."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        # weights_only: a checkpoint holds tensors and plain values only, so nothing in it can run code.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as err:
        # a truncated file (a copy cut short, a full disk) is an OSError from torch's zip reader
        raise UserError(f"checkpoint {path} is corrupt, truncated or not a PyTorch checkpoint ({type(err).__name__})") from None
    if not isinstance(checkpoint, dict) or "makemore_lab" not in checkpoint or "state_dict" not in checkpoint:
        raise UserError(f"checkpoint {path} was not written by makemore-lab (no model config inside)")
    return checkpoint


def net_state_dict(checkpoint: dict) -> dict:
    """The architecture's weights in a checkpoint: CharLM keeps the model as `net`, so its keys carry "net."."""
    return {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}


def load_trained_net(ckpt_path: str | Path) -> tuple[torch.nn.Module, Vocabulary, dict]:
    """Returns (net in eval mode on the CPU, its vocabulary, the checkpoint's makemore_lab metadata)."""
    checkpoint = read_checkpoint(ckpt_path)
    meta = checkpoint["makemore_lab"]
    vocab = Vocabulary(tuple(meta["vocab"]))
    net = instantiate(meta["model"], vocab_size=len(vocab), block_size=meta["block_size"])
    net.load_state_dict(net_state_dict(checkpoint))
    return net.eval(), vocab, meta


def checkpoint_datamodule(meta: dict, vocab: Vocabulary, path: str | None = None, **overrides) -> CharDataModule:
    """The checkpoint's own data and split, rebuilt from the data settings it saved (or another file's, by `path`).

    `overrides` go to CharDataModule (e.g. splits=("val", "test"), whole_item_eval=True). On its own file, a
    checkpoint that recorded its data (meta["data_fingerprint"]) must find the same file: a changed file would
    reshuffle the split and leak training items into val/test, and report numbers that mean nothing.
    """
    data = {k: v for k, v in meta["data"].items() if k != "_target_"}
    if path is not None:
        data["path"] = path
    data["block_size"] = meta["block_size"]  # the model's context length is fixed by its weights
    datamodule = CharDataModule(**{**data, **overrides}, vocab=vocab)
    if path is None:
        check_data_unchanged(meta, datamodule)
    return datamodule


def check_data_unchanged(meta: dict, datamodule: CharDataModule) -> None:
    """One line if the checkpoint's training file is not the file it was trained on (same items, same bytes)."""
    recorded = meta.get("data_fingerprint")
    if not recorded or recorded == datamodule.fingerprint:
        return
    raise UserError(
        f"the data file {datamodule.source or 'names.txt'} changed since training ({recorded['items']:,} items, "
        f"sha256 {recorded['sha256'][:12]}… then; {datamodule.fingerprint['items']:,} items, sha256 "
        f"{datamodule.fingerprint['sha256'][:12]}… now): its split would not be the one trained on. To evaluate "
        "on another file deliberately, pass data.path=<file>"
    )
