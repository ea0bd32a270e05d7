"""The training task: config -> data, model, trainer -> fit -> final losses, samples, summary.json.

Called by the thin ./train.py (a Hydra app); tests call `train(cfg)` with a composed config.
"""

import contextlib
import json
import inspect
import logging
import math
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from makemore_lab.checkpoint import net_state_dict, read_checkpoint
from makemore_lab.errors import (
    FailedTrial,
    OverParamBudget,
    TrainingDiverged,
    TrainingInterrupted,
    UserError,
    exit_on_user_error,
)
from makemore_lab.losses import split_loss
from makemore_lab.module import CharLM
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


def check_partial(factory, what: str, **kwargs) -> None:
    """Call a partial (optimizer, schedule) once now, so a wrong key fails here in one line, not mid-fit.

    A typical case: an experiment preset sets `schedule.at` for the step schedule and the command line switches to
    `schedule=cosine`, which takes no `at` (remove it with `~schedule.at`).
    """
    try:
        factory(**kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"bad {what} config: {err}") from None


def check_config(cfg: DictConfig) -> None:
    """Catch the values that would otherwise fail deep inside torch with a traceback."""
    lr = cfg.optimizer.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < 1e30:
        raise UserError(f"optimizer.lr must be a positive number below 1e30, got {lr!r}")
    max_steps = cfg.trainer.get("max_steps")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise UserError(f"trainer.max_steps must be a positive integer, got {max_steps!r}")
    if cfg.final_weights not in ("last", "best"):
        raise UserError(f"final_weights must be 'last' or 'best', got {cfg.final_weights!r}")


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


def check_resume_checkpoint(ckpt_path: str, checkpoint_meta: dict) -> None:
    """A checkpoint to resume from must load and hold the model this config builds, or Lightning fails deep inside."""
    meta = read_checkpoint(ckpt_path)["makemore_lab"]
    for key in ("model", "vocab", "block_size"):
        if meta.get(key) != checkpoint_meta[key]:
            raise UserError(
                f"checkpoint {ckpt_path} was trained with a different {key} ({meta.get(key)}) than this config "
                f"builds ({checkpoint_meta[key]}): resume with the run's original overrides"
            )


def resume_command(out_dir: Path) -> str:
    """The command that continues this run: its own overrides, its run dir, its last checkpoint."""
    overrides = []
    if HydraConfig.initialized():
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(("ckpt_path=", "hydra.run.dir="))]
    last = out_dir / "checkpoints" / "last.ckpt"
    return shlex.join(["python", "train.py", *overrides, f"hydra.run.dir={out_dir}", f"ckpt_path={last}"])


@contextlib.contextmanager
def stop_after_current_call_on_sigint(trainer: pl.Trainer):
    """First Ctrl-C: finish the current training call, then stop cleanly; a second Ctrl-C stops at once."""
    stop = {"requested": False}
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield stop
        return
    previous = signal.getsignal(signal.SIGINT)

    def request_stop(signum, frame):
        stop["requested"] = True
        trainer.should_stop = True  # Lightning ends the fit after the current batch
        signal.signal(signal.SIGINT, previous)
        print("\nCtrl-C: stopping after the current step and saving a checkpoint (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, request_stop)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def fit(trainer: pl.Trainer, module: CharLM, datamodule, ckpt_path: str | None, out_dir: Path) -> float:
    """trainer.fit, then save the final weights; returns the wall time. Stops cleanly on Ctrl-C and divergence."""
    last = out_dir / "checkpoints" / "last.ckpt"
    start = time.perf_counter()
    try:
        with stop_after_current_call_on_sigint(trainer) as stop:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except TrainingDiverged as err:
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was saved before it"
        raise TrainingDiverged(f"{err}; {kept}") from None
    seconds = time.perf_counter() - start
    trainer.save_checkpoint(last)  # the final (or interrupted) weights, whatever the checkpoint cadence
    if stop["requested"]:
        raise TrainingInterrupted(
            f"interrupted at step {trainer.global_step} of {trainer.max_steps}; checkpoint saved. "
            f"Resume with: {resume_command(out_dir)}"
        )
    return seconds


def train(cfg: DictConfig) -> dict:
    check_config(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)

    steps_per_call = effective_steps_per_call(cfg)
    datamodule = build(cfg.data, "data", steps_per_call=steps_per_call)
    net = build(cfg.model, "model", vocab_size=datamodule.vocab_size, block_size=datamodule.block_size)
    params = sum(p.numel() for p in net.parameters())
    if cfg.get("max_params") is not None and params > cfg.max_params:
        raise OverParamBudget(f"the model has {params:,} parameters, more than max_params={cfg.max_params:,}")
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
    if cfg.get("ckpt_path"):
        check_resume_checkpoint(cfg.ckpt_path, checkpoint_meta)
    schedule = build(cfg.schedule, "schedule") if cfg.get("schedule") else None
    optimizer = build(cfg.optimizer, "optimizer")
    check_partial(optimizer, "optimizer", params=[torch.zeros(1, requires_grad=True)])
    if schedule is not None:
        check_partial(schedule, "schedule", total_steps=cfg.trainer.max_steps)
    all_positions = datamodule.train_on == "items"
    if all_positions and "all_positions" not in inspect.signature(net.forward).parameters:
        raise UserError(
            f"data.train_on=items needs a sequence model (rnn, gru, lstm, transformer); {cfg.model_name} predicts "
            "one character per window: use data.train_on=windows"
        )
    module = CharLM(net, optimizer, schedule, cfg.data.batch_size, checkpoint_meta, all_positions)

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
    train_seconds = fit(trainer, module, datamodule, cfg.get("ckpt_path"), out_dir)
    if not trainer.is_global_zero:
        return {}
    final_step = trainer.global_step
    if cfg.final_weights == "best":
        final_step = load_best_weights(trainer, net)
    summary = {
        "model": cfg.model_name,
        "params": params,
        "vocab_size": datamodule.vocab_size,
        "block_size": datamodule.block_size,
        "train_examples": len(datamodule.splits["train"]),
        "val_examples": len(datamodule.splits["val"]),
        "test_examples": len(datamodule.splits["test"]),
        "steps": trainer.global_step,
        "final_weights_step": final_step,
        "initial_loss": module.initial_loss,
        "expected_initial_loss": math.log(datamodule.vocab_size),
        **final_evaluation(cfg, trainer, net, datamodule, params),
        "train_seconds": train_seconds,
        "steps_per_second": trainer.global_step / train_seconds,
        "seed": cfg.seed,
        "output_dir": str(out_dir),
    }
    for callback in callbacks:  # callbacks that measure something add it here (e.g. the diagnostics' `health`)
        if hasattr(callback, "summary_fields"):
            summary.update(callback.summary_fields())
    write_json_atomically(out_dir / "summary.json", summary)  # last: its presence means the run finished
    log.info("summary: %s", out_dir / "summary.json")
    return summary


def load_best_weights(trainer: pl.Trainer, net: torch.nn.Module) -> int:
    """Put the best validation checkpoint's weights into `net`; returns the step they were saved at."""
    best = getattr(trainer.checkpoint_callback, "best_model_path", "")
    if not best:
        raise UserError("final_weights=best needs the model_checkpoint callback and at least one validation")
    checkpoint = read_checkpoint(best)
    net.load_state_dict(net_state_dict(checkpoint))
    log.info("final losses use the best validation's weights: %s (step %d)", best, checkpoint["global_step"])
    return checkpoint["global_step"]


def final_evaluation(cfg: DictConfig, trainer: pl.Trainer, net, datamodule, params: int) -> dict:
    """Exact losses on all three splits, logged to TensorBoard with the run's hparams, and a few samples printed."""
    losses = {split: split_loss(net, datamodule, split) for split in ("train", "val", "test")}
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
    return {f"{split}_loss": loss for split, loss in losses.items()} | {"samples": samples}


@exit_on_user_error
def run(cfg: DictConfig) -> float:
    """Entry point body for ./train.py; returns the val loss so Hydra sweepers (Optuna) can minimise it.

    In a multirun a diverged or over-budget job returns +inf instead of exiting: one bad lr is a result, not the end
    of the sweep (Optuna ranks the trial worst: the optuna sweeper plugin crashes on nan; the sweep summary lists
    the job last, without numbers).
    """
    try:
        return train(cfg).get("val_loss", float("nan"))
    except FailedTrial as err:
        if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
            raise
        log.error("job %s: %s", HydraConfig.get().job.num, err)
        return math.inf
