"""What a finished run reports: exact losses on the three splits, samples, TensorBoard hparams and summary.json."""

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger

from makemore_lab import console, tensorboard_events
from makemore_lab.atomic_write import last_good, write_json_atomically
from makemore_lab.checkpoint import net_state_dict, read_checkpoint
from makemore_lab.commands import losses_command
from makemore_lab.errors import TrainingDiverged, UserError
from makemore_lab.losses import split_loss
from makemore_lab.sampling import generate

log = logging.getLogger(__name__)


def hparams_for_tensorboard(cfg: DictConfig, params: int, block_size: int, overrides=()) -> dict:
    """The knobs a sweep varies, flat, for TensorBoard's HParams tab; the keys the run overrode first (the tab shows
    its first columns), then the usual ones."""
    flat = {"model": cfg.model_name, "params": params, "block_size": block_size, "seed": cfg.seed}
    flat["batch_size"] = cfg.data.batch_size
    flat["max_steps"] = cfg.trainer.max_steps
    flat["optimizer"] = cfg.optimizer._target_.rsplit(".", 1)[-1]
    flat["schedule"] = cfg.schedule._target_.rsplit(".", 1)[-1] if cfg.get("schedule") else "none"
    for group in ("optimizer", "model"):
        for key, value in cfg[group].items():
            if not key.startswith("_") and isinstance(value, (int, float, str, bool)):
                flat[f"{group}.{key}"] = value
    overridden = [key for key in (str(o).partition("=")[0].lstrip("+~") for o in overrides) if key in flat]
    return {**{key: flat[key] for key in overridden}, **flat}


def hparams_tab(cfg: DictConfig, hparams: dict, overrides=()) -> dict:
    """The HParams tab's columns. TensorBoard lists them by name and shows only the first few, so a run given
    overrides shows those (what its sweep varies is among them) beside its model and size; the loggers' own params
    (hparams.yaml, MLflow, W&B) keep the full set."""
    chosen = {}
    for override in overrides:
        key = str(override).partition("=")[0].lstrip("+~")
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, (int, float, str, bool)) and not key.startswith(("hydra.", "paths.", "data.path")):
            chosen[key] = value
    return {"model": hparams["model"], "params": hparams["params"], **chosen} if chosen else hparams


def load_best_weights(best: str, net: torch.nn.Module) -> int:
    """Put the best validation checkpoint's weights (the file `best`) into `net`; returns the step they were saved at."""
    if not best:
        raise UserError("final_weights=best needs the model_checkpoint callback and at least one validation")
    checkpoint = read_checkpoint(best)
    net.load_state_dict(net_state_dict(checkpoint))
    log.info("final losses use the best validation's weights: %s (step %d)", best, checkpoint["global_step"])
    return checkpoint["global_step"]


def final_losses(cfg: DictConfig, end: "RunEnd", net, datamodule, params: int, overrides=()) -> dict:
    """Exact losses on all three splits, logged with the run's hparams. In TensorBoard the val loss is one tag,
    `val/loss`: its last point is the exact final loss (added at the last step unless the last validation gave it)."""
    losses = {split: split_loss(net, datamodule, split) for split in ("train", "val", "test")}
    log.info(
        "final loss (nats): train %.4f  val %.4f  test %.4f",
        losses["train"],
        losses["val"],
        losses["test"],
        extra=console.job_detail(),
    )
    seen = end.metrics  # None: a run that does not say (a population member's: its val/loss is logged already)
    validated = None if seen is None else seen.get("val/loss")
    exact_is_last = seen is None or (
        validated is not None and math.isclose(float(validated), losses["val"], rel_tol=1e-5)
    )
    hparams = hparams_for_tensorboard(cfg, params, datamodule.block_size, overrides)
    for logger in end.loggers:
        final = {"test/loss": losses["test"], **({} if exact_is_last else {"val/loss": losses["val"]})}
        logger.log_metrics(final, step=end.step)
        logger.log_hyperparams(hparams)
        if isinstance(logger, TensorBoardLogger):  # the HParams tab shows each run's val/loss and test/loss
            tensorboard_events.write_hparams(
                logger.experiment, hparams_tab(cfg, hparams, overrides), ("val/loss", "test/loss")
            )
            if seen is not None and validated is None:
                tensorboard_events.write_text(
                    logger.experiment, "val/note", no_validation_note(cfg, end.step), end.step
                )
        logger.save()
    return {f"{split}_loss": loss for split, loss in losses.items()}


def no_validation_note(cfg: DictConfig, step: int) -> str:
    return (
        f"This run ended at step {step}, before its first validation "
        f"(trainer.val_check_interval={cfg.trainer.get('val_check_interval')}): val/loss has one point, the "
        "exact final loss on the whole val split."
    )


def check_finite(losses: dict[str, float], out_dir: Path) -> None:
    """A training loss can stay finite (~1e30) while the weights have diverged: the exact final losses tell. Such
    a run writes no summary.json (its numbers mean nothing); its last.ckpt holds the diverged weights."""
    bad = {name: loss for name, loss in losses.items() if not math.isfinite(loss)}
    if bad:
        shown = ", ".join(f"{name}={loss}" for name, loss in bad.items())
        raise TrainingDiverged(
            f"training diverged: the final {shown} (a lower optimizer.lr usually helps); the "
            f"diverged weights are in {out_dir / 'checkpoints' / 'last.ckpt'}"
        )


def print_samples(net, datamodule, num_samples: int, seed: int) -> list[str]:
    generator = torch.Generator().manual_seed(seed)
    samples = generate(net, datamodule.vocab, num_samples, datamodule.block_size, generator)
    console.report("samples:\n  " + "\n  ".join(samples), log)
    return samples


@dataclass(frozen=True)
class RunEnd:
    """What a finished fit hands its report: the step it reached, its loggers, the callbacks that add summary
    fields (`summary_fields()`), its best checkpoint's path, and the metrics its last validation logged (None where
    they are not the run's own: a population member's)."""

    step: int
    loggers: list
    callbacks: list
    best_path: str = ""
    metrics: dict | None = None

    @classmethod
    def of(cls, trainer: pl.Trainer) -> "RunEnd":
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
        return cls(trainer.global_step, trainer.loggers, trainer.callbacks, best, trainer.callback_metrics)


def report(cfg: DictConfig, end: RunEnd, module, datamodule, segment, extra: dict | None = None) -> dict:
    """The run's summary.json (written last: its presence means the run finished), returned as a dict.

    `segment` is the fit just done (a resumed run reports its own steps and time, not the whole run's); `extra`
    adds fields (a population member's `population_size`).
    """
    net, params = module.net, sum(p.numel() for p in module.net.parameters())
    final_step = load_best_weights(end.best_path, net) if cfg.final_weights == "best" else end.step
    losses = final_losses(cfg, end, net, datamodule, params, module.checkpoint_meta.get("overrides", []))
    check_finite(losses, Path(cfg.paths.output_dir))
    summary = {
        "model": cfg.model_name,
        "params": params,
        "vocab_size": datamodule.vocab_size,
        "block_size": datamodule.block_size,
        **{f"{split}_examples": datamodule.num_examples(split) for split in ("train", "val", "test")},
        "steps": end.step,
        "final_weights_step": final_step,
        "initial_loss": module.initial_loss,
        "expected_initial_loss": math.log(datamodule.vocab_size),
        **losses,
        "samples": print_samples(net, datamodule, cfg.num_samples, cfg.seed),
        "train_seconds": segment.seconds,
        "steps_per_second": segment.steps / segment.seconds if segment.seconds > 0 else None,
        "seed": cfg.seed,
        "output_dir": str(cfg.paths.output_dir),
        "overrides": module.checkpoint_meta.get("overrides", []),  # the job's own, for the sweep table
    }
    if segment.resumed_from_step:
        summary["resumed_from_step"] = segment.resumed_from_step
    summary.update(extra or {})
    for callback in end.callbacks:  # callbacks that measure something add it here (e.g. the diagnostics' `health`)
        if hasattr(callback, "summary_fields"):
            summary.update(callback.summary_fields())
    out_dir = Path(cfg.paths.output_dir)
    try:
        write_json_atomically(out_dir / "summary.json", summary)
    except OSError as err:  # a full disk at the very end: the trained weights are in last.ckpt
        raise UserError(
            f"cannot write {err.filename} ({err.strerror}): the run trained to step "
            f"{end.step}, and {last_good(out_dir)}; its losses: "
            f"{losses_command(out_dir / 'checkpoints' / 'last.ckpt', datamodule.source)}"
        ) from None
    log.info("summary: %s", Path(cfg.paths.output_dir) / "summary.json", extra=console.job_detail())
    if console.in_multirun():  # the job's one console line; the lines above are in its train.log
        log.info("%s", console.job_report_line(summary))
    return summary
