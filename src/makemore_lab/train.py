"""The training task: config -> data, model, trainer -> fit -> final losses, samples, summary.json.

Called by the thin ./train.py (a Hydra app); tests call `train(cfg)` with a composed config.
"""

import json
import logging
import math
import os
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from makemore_lab.errors import UserError, exit_on_user_error
from makemore_lab.module import CharLM, split_loss
from makemore_lab.sampling import generate

log = logging.getLogger(__name__)


def build(node: DictConfig, what: str, **kwargs):
    """hydra.utils.instantiate, with a bad config value reported as one line instead of a traceback."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        cause = err.__cause__ or err
        raise UserError(f"bad {what} config: {type(cause).__name__}: {cause}") from None


def check_config(cfg: DictConfig) -> None:
    """Catch the values that would otherwise fail deep inside torch with a traceback."""
    lr = cfg.optimizer.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise UserError(f"optimizer.lr must be a positive number, got {lr!r}")
    max_steps = cfg.trainer.get("max_steps")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise UserError(f"trainer.max_steps must be a positive integer, got {max_steps!r}")


def effective_steps_per_call(cfg: DictConfig) -> int:
    """Optimizer steps per Lightning call, shrunk to divide the validation and logging intervals so both stay exact.

    DDP gets 1: its gradient sync is set up once per forward call of the wrapped module.
    """
    k = cfg.steps_per_call
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UserError(f"steps_per_call must be a positive integer, got {k!r}")
    if "ddp" in str(cfg.trainer.get("strategy", "")):
        return 1
    if str(cfg.trainer.get("precision", "")).startswith("16"):
        raise UserError("trainer.precision=16-mixed is not supported (the fast step has no gradient scaler); use bf16-mixed")
    for key in ("val_check_interval", "log_every_n_steps"):
        interval = cfg.trainer.get(key)
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise UserError(f"trainer.{key} must be a positive number of steps, got {interval!r}")
        k = math.gcd(k, interval)
    return k


def write_json_atomically(path: Path, data: dict) -> None:
    """Write to a temporary file, then rename: a reader never sees a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def hparams_for_tensorboard(cfg: DictConfig, params: int, block_size: int) -> dict:
    """The knobs a sweep varies, flat, for TensorBoard's HParams tab."""
    flat = {"model": cfg.model_name, "params": params, "block_size": block_size, "seed": cfg.seed}
    flat["batch_size"] = cfg.data.batch_size
    flat["max_steps"] = cfg.trainer.max_steps
    flat["optimizer"] = cfg.optimizer._target_.rsplit(".", 1)[-1]
    flat["schedule"] = cfg.schedule._target_.rsplit(".", 1)[-1] if cfg.get("schedule") else "none"
    for group in ("optimizer", "model"):
        for key, value in cfg[group].items():
            if not key.startswith("_") and isinstance(value, (int, float, str, bool)):
                flat[f"{group}.{key}"] = value
    return flat


def train(cfg: DictConfig) -> dict:
    check_config(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)

    steps_per_call = effective_steps_per_call(cfg)
    datamodule = build(cfg.data, "data", steps_per_call=steps_per_call)
    net = build(cfg.model, "model", vocab_size=datamodule.vocab_size, block_size=datamodule.block_size)
    params = sum(p.numel() for p in net.parameters())
    log.info(
        "%s: %s params, vocab %d, block_size %d, examples %d/%d/%d",
        cfg.model_name, f"{params:,}", datamodule.vocab_size, datamodule.block_size,
        *(len(datamodule.splits[s]) for s in ("train", "val", "test")),
    )
    checkpoint_meta = {
        "model_name": cfg.model_name,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": {**OmegaConf.to_container(cfg.data, resolve=True), "path": datamodule.source},
        "vocab": list(datamodule.vocab.chars),
        "block_size": datamodule.block_size,
    }
    schedule = build(cfg.schedule, "schedule") if cfg.get("schedule") else None
    module = CharLM(net, build(cfg.optimizer, "optimizer"), schedule, cfg.data.batch_size, checkpoint_meta)

    callbacks = [build(c, "callbacks") for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    loggers = [build(c, "logger") for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
    trainer: pl.Trainer = build(
        cfg.trainer,
        "trainer",
        callbacks=callbacks,
        logger=loggers or False,
        # Lightning counts these in batches; a batch is steps_per_call optimizer steps.
        val_check_interval=cfg.trainer.val_check_interval // steps_per_call,
        log_every_n_steps=cfg.trainer.log_every_n_steps // steps_per_call,
    )

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    train_seconds = time.perf_counter() - start
    trainer.save_checkpoint(out_dir / "checkpoints" / "last.ckpt")  # the final weights, whatever the val cadence
    if not trainer.is_global_zero:
        return {}

    losses = {split: split_loss(net, ds.x, ds.y) for split, ds in datamodule.splits.items()}
    log.info("final loss (nats): train %.4f  val %.4f  test %.4f", losses["train"], losses["val"], losses["test"])
    for logger in trainer.loggers:
        logger.log_metrics({"test/loss": losses["test"], "final/val_loss": losses["val"]}, step=trainer.global_step)
        logger.log_hyperparams(
            hparams_for_tensorboard(cfg, params, datamodule.block_size),
            metrics={"hparams/val_loss": losses["val"], "hparams/test_loss": losses["test"]},
        )
        logger.save()

    generator = torch.Generator().manual_seed(cfg.seed)
    samples = generate(net, datamodule.vocab, cfg.num_samples, datamodule.block_size, generator)
    print("samples:\n  " + "\n  ".join(samples), flush=True)

    summary = {
        "model": cfg.model_name,
        "params": params,
        "vocab_size": datamodule.vocab_size,
        "block_size": datamodule.block_size,
        "train_examples": len(datamodule.splits["train"]),
        "val_examples": len(datamodule.splits["val"]),
        "test_examples": len(datamodule.splits["test"]),
        "steps": trainer.global_step,
        "initial_loss": module.initial_loss,
        "expected_initial_loss": math.log(datamodule.vocab_size),
        "train_loss": losses["train"],
        "val_loss": losses["val"],
        "test_loss": losses["test"],
        "train_seconds": train_seconds,
        "steps_per_second": trainer.global_step / train_seconds,
        "seed": cfg.seed,
        "samples": samples,
        "output_dir": str(out_dir),
    }
    for callback in callbacks:  # callbacks that measure something add it here (e.g. the diagnostics' `health`)
        if hasattr(callback, "summary_fields"):
            summary.update(callback.summary_fields())
    write_json_atomically(out_dir / "summary.json", summary)
    log.info("summary: %s", out_dir / "summary.json")
    return summary


@exit_on_user_error
def run(cfg: DictConfig) -> float:
    """Entry point body for ./train.py; returns the val loss so Hydra sweepers (Optuna) can minimise it."""
    return train(cfg).get("val_loss", float("nan"))
