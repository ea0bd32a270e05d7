"""Rebuild a trained model from a checkpoint file alone: the checkpoint carries the model config and vocabulary.

A checkpoint may come from someone else, so it is read as data, never as code: torch loads it with
`weights_only=True` (tensors and plain values only), every field used is checked for its type, and the model is
built by looking its `_target_` up among this package's own model classes (the targets of the shipped
configs/model/*.yaml), with plain keyword values only. Nothing in a checkpoint is handed to Hydra's instantiate,
so a crafted `_target_` (a nested one, `_partial_`, `_args_`, a class outside makemore_lab.models) cannot run.
"""

import functools
import importlib
import io
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from makemore_lab.atomic_write import write_bytes_atomically
from makemore_lab.configs import CONFIG_DIR
from makemore_lab.data import CharData, Vocabulary
from makemore_lab.data.reading import read_data_file
from makemore_lab.errors import UserError

PLAIN = (bool, int, float, str, type(None))


def save_atomically(checkpoint: dict, path: str | Path) -> None:
    """torch.save `checkpoint` as `path`, whole or not at all: serialised in memory, then written beside `path` and
    moved into place (atomic_write). A full disk is an OSError naming `path` (torch.save to a file would raise
    its `[enforce fail at inline_container.cc]` RuntimeError and leave a cut file), and the previous checkpoint
    at `path` is kept. Every checkpoint the project writes goes through here: a run's (checkpoint_io.py) and a
    population member's."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(path, buffer.getbuffer())


def read_checkpoint(ckpt_path: str | Path) -> dict:
    """The checkpoint's contents, checked to be a makemore-lab checkpoint, or a UserError saying why it is not."""
    path = Path(ckpt_path)
    if path.is_dir():
        raise UserError(
            f"checkpoint {path} is a directory, not a checkpoint file (e.g. <run dir>/checkpoints/last.ckpt)"
        )
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        # weights_only: a checkpoint holds tensors and plain values only, so nothing in it can run code.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any bytes at all may be handed to us
        # Whatever a file that is not a checkpoint makes torch's readers raise (a truncated zip is an OSError, a
        # text file a KeyError from the legacy unpickler, a pickle of objects an UnpicklingError): the file is bad.
        raise UserError(
            f"checkpoint {path} is corrupt, truncated or not a PyTorch checkpoint ({type(err).__name__})"
        ) from None
    check_contents(checkpoint, path)
    return checkpoint


def check_contents(checkpoint, path: Path) -> None:
    """The fields this package reads, with their types: anything else is not one of our checkpoints."""
    if (
        not isinstance(checkpoint, dict)
        or not isinstance(checkpoint.get("makemore_lab"), dict)
        or "state_dict" not in checkpoint
    ):
        raise UserError(f"checkpoint {path} was not written by makemore-lab (no model config inside)")
    meta, state = checkpoint["makemore_lab"], checkpoint["state_dict"]

    def bad(what: str):
        return UserError(f"checkpoint {path} is not a usable makemore-lab checkpoint: {what}")

    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise bad("its state_dict is not a mapping of names to tensors")
    vocab = meta.get("vocab")
    if not (
        isinstance(vocab, list)
        and vocab
        and vocab[0] == "."
        and all(isinstance(c, str) and len(c) == 1 for c in vocab)
        and len(set(vocab)) == len(vocab)
    ):
        raise bad("its vocab is not a list of distinct characters starting with '.'")
    block_size = meta.get("block_size")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise bad(f"its block_size is not a positive integer ({block_size!r})")
    if not isinstance(meta.get("data"), dict) or not all(isinstance(v, PLAIN) for v in meta["data"].values()):
        raise bad("its data settings are not plain values")
    # The model config is checked where a model is built from it (load_trained_net): a resumed run builds its model
    # from its own config (maybe a class of the user's) and only compares the saved one with it.
    if not isinstance(checkpoint.get("global_step", 0), int):
        raise bad("its global_step is not an integer")


@functools.cache
def model_classes() -> dict[str, type]:
    """`_target_` -> class, for the models this package ships: the targets named by its own configs/model/*.yaml.

    The module imported is one this package names in its own files (makemore_lab.models.*), never one read from a
    checkpoint: a checkpoint's `_target_` is only a key into this table.
    """
    classes = {}
    for option in sorted(Path(CONFIG_DIR, "model").glob("*.yaml")):
        target = OmegaConf.load(option).model._target_
        module, _, name = target.rpartition(".")
        assert module.startswith("makemore_lab.models."), f"{option} names a model outside the package: {target}"
        classes[target] = getattr(importlib.import_module(module), name)
    return classes


def check_resumable(checkpoint: dict, ckpt_path, expected: dict, max_steps: int, population: bool = False) -> None:
    """The refusals of a resume that the checkpoint and the run's settings decide, one line each: it holds another
    model, vocabulary, block size, optimizer or data than `expected` gives (the checkpoint_meta this config builds;
    a key left out is not compared: the run dir's Hydra callback knows the config, not yet the data), it is weights
    only or a population member's, or it is at or past `max_steps` (nothing to train)."""
    meta = checkpoint["makemore_lab"]
    for key in ("model", "vocab", "block_size", "optimizer"):
        if key in meta and key in expected and meta[key] != expected[key]:
            raise UserError(
                f"checkpoint {ckpt_path} was trained with a different {key} ({meta.get(key)}) than this config "
                f"builds ({expected[key]}): resume with the run's original overrides"
            )
    recorded = meta.get("data_fingerprint")
    if (
        recorded and expected.get("data_fingerprint") and recorded != expected["data_fingerprint"]
    ):  # val/test would hold training items
        raise UserError(
            f"checkpoint {ckpt_path} was trained on other data ({describe(recorded)}) than data.path gives "
            f"({describe(expected['data_fingerprint'])}): resume with the run's own data file"
        )
    # A population resumes its members' checkpoints (no Lightning loop state: population/member.py) and solo ones.
    needed = ("optimizer_states", "global_step") if population else ("optimizer_states", "loops", "global_step")
    if not population and "population_member" in checkpoint and "loops" not in checkpoint:
        raise UserError(
            f"checkpoint {ckpt_path} is a population member's: resume it with its sweep's command "
            "(hydra/launcher=population), or sample and evaluate it"
        )
    if not all(key in checkpoint for key in needed):
        raise UserError(
            f"checkpoint {ckpt_path} holds weights only (no optimizer or loop state): it can be sampled "
            "and evaluated, not resumed"
        )
    step = checkpoint["global_step"]
    if step >= max_steps:
        raise UserError(
            f"checkpoint {ckpt_path} is at step {step:,}, and trainer.max_steps={max_steps:,}: nothing "
            f"to train. To train longer, raise trainer.max_steps (e.g. trainer.max_steps={2 * step})"
        )


def plain_model_config(model, path: Path) -> tuple[type, dict]:
    """(the model class, its keyword arguments) from a saved model config, or a UserError in one line.

    Only a `_target_` among this package's model classes, and only plain values (numbers, strings, booleans, null)
    as its arguments: a nested dict (another `_target_`), a list, or a Hydra key such as `_partial_`, `_args_` or
    `_recursive_` is refused, since only Hydra's instantiate would give them a meaning.
    """
    if not isinstance(model, dict) or not isinstance(model.get("_target_"), str):
        raise UserError(f"checkpoint {path} is not a usable makemore-lab checkpoint: its model config has no _target_")
    target = model["_target_"]
    if target not in model_classes():
        raise UserError(
            f"checkpoint {path} names a model that is not one of makemore-lab's ({target!r}): refusing "
            f"to build it (known: {', '.join(c.__name__ for c in model_classes().values())})"
        )
    kwargs = {k: v for k, v in model.items() if k != "_target_"}
    for key, value in kwargs.items():
        if not isinstance(key, str) or key.startswith("_") or not key.isidentifier() or not isinstance(value, PLAIN):
            shown = f"a {type(value).__name__}" if not isinstance(value, PLAIN) else repr(value)
            raise UserError(
                f"checkpoint {path} has a model config that is not plain data (model.{key}: {shown}): "
                "refusing to build it"
            )
    return model_classes()[target], kwargs


def net_state_dict(checkpoint: dict) -> dict:
    """The architecture's weights in a checkpoint: CharLM keeps the model as `net`, so its keys carry "net."."""
    return {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}


def check_weights_fit(net: torch.nn.Module, weights: dict, path: Path) -> None:
    """One line naming the first weight that the model built from the config cannot take (missing, extra, shape)."""
    expected = net.state_dict()
    for name, tensor in expected.items():
        if name not in weights:
            raise UserError(
                f"checkpoint {path} has no weight {name} for its model: its weights and model config do not match"
            )
        if weights[name].shape != tensor.shape:
            raise UserError(
                f"checkpoint {path}'s weights do not fit its model config: {name} is "
                f"{list(weights[name].shape)} in the file, {list(tensor.shape)} in the model"
            )
    extra = sorted(set(weights) - set(expected))
    if extra:
        raise UserError(
            f"checkpoint {path} has weights its model does not have ({extra[0]}, ...): its weights and "
            "model config do not match"
        )


def load_trained_net(ckpt_path: str | Path) -> tuple[torch.nn.Module, Vocabulary, dict]:
    """Returns (net in eval mode on the CPU, its vocabulary, the checkpoint's makemore_lab metadata)."""
    path = Path(ckpt_path)
    checkpoint = read_checkpoint(path)
    meta = checkpoint["makemore_lab"]
    vocab = Vocabulary(tuple(meta["vocab"]))
    model_class, kwargs = plain_model_config(meta.get("model"), path)
    try:
        net = model_class(**kwargs, vocab_size=len(vocab), block_size=meta["block_size"])
    except UserError as err:
        raise UserError(f"checkpoint {path}: {err}") from None
    except (
        TypeError,
        ValueError,
        RuntimeError,
        AssertionError,
        OverflowError,
    ) as err:  # the saved sizes do not build a model
        raise UserError(
            f"checkpoint {path} has a model config that does not build "
            f"{model_class.__name__}: {type(err).__name__}: {err}".splitlines()[0]
        ) from None
    weights = net_state_dict(checkpoint)
    check_weights_fit(net, weights, path)
    net.load_state_dict(weights)
    return net.eval(), vocab, meta


def checkpoint_datamodule(
    meta: dict, vocab: Vocabulary, path: str | None = None, exact: bool | None = None, **overrides
) -> CharData:
    """The data and split a checkpoint was trained with, rebuilt from its saved data settings on the file the USER
    names (`path`: data.path=) or, by default, the packaged names.txt, and checked against the checkpoint's
    fingerprint. A checkpoint may come from someone else: the data path it recorded is never opened (it could name
    any local file, whose characters or lines an error would then print).

    A CharData: the data module without Lightning (sample.py and eval.py read no loaders). `overrides` go to it
    (e.g. splits=("val", "test"), whole_item_eval=True). `exact` (default: when no path is named) refuses a file
    that is not the one trained on (its split would leak training items into val/test); otherwise such a file is
    used as asked, and a note on stderr says it is not the training file.
    """
    data = {k: v for k, v in meta["data"].items() if k not in ("_target_", "path")}
    data["path"] = path
    data["block_size"] = meta["block_size"]  # the model's context length is fixed by its weights
    try:
        datamodule = CharData(**{**data, **overrides}, vocab=vocab)
    except TypeError as err:  # a saved setting CharData does not take (another version's, or crafted)
        raise UserError(f"the checkpoint's data settings do not fit this version: {err}") from None
    other = other_data(meta, datamodule, path)
    if other and (exact if exact is not None else path is None):
        raise UserError(other)
    if other:
        print(f"note: {other}", file=sys.stderr)
    return datamodule


def other_data(meta: dict, datamodule: CharData, path: str | None) -> str | None:
    """Why `datamodule`'s file is not the one the checkpoint was trained on (items and bytes), or None (also for a
    checkpoint from before fingerprints)."""
    recorded = meta.get("data_fingerprint")
    if not recorded or recorded == datamodule.fingerprint:
        return None
    if path is None:
        saved = meta["data"].get("path")
        named = f" (it recorded the path {str(saved)[:200]!r}, which is not opened)" if saved else ""
        return (
            f"this checkpoint was trained on other data ({describe(recorded)}) than the packaged names.txt "
            f"({describe(datamodule.fingerprint)}): pass the file it was trained on, data.path=<file>{named}"
        )
    return (
        f"the data file {path} is not the file this checkpoint was trained on ({describe(recorded)} then; "
        f"{describe(datamodule.fingerprint)} now): changed since training, or another file, so its split is "
        "not the one trained on"
    )


def data_fingerprint(path: str | None, max_bytes: int | None = None) -> dict:
    """A data file's fingerprint as a checkpoint records it (CharData.fingerprint): its items and bytes' sha256.
    `path` None: the packaged names.txt."""
    data = read_data_file(path, max_bytes) if max_bytes else read_data_file(path)
    return {"items": len(data.items), "sha256": data.sha256}


def describe(fingerprint: dict) -> str:
    return f"{fingerprint['items']:,} items, sha256 {fingerprint['sha256'][:12]}…"
