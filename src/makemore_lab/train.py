"""The training task: config -> data, model, trainer -> fit -> final losses, samples, summary.json.

Called by the thin ./train.py (a Hydra app); tests call `train(cfg)` with a composed config. This file is the
build order; the config rules live in config_schema.py, the per-step loop in engine.py, stopping and resuming in
resume.py, the final report in final_report.py, what a failing job does to a sweep in sweep_policy.py.
"""

import copy
import logging
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from makemore_lab import (
    allocator,
    commands,
    config_schema,
    final_report,
    lightning_flags,
    logging_media,
    resume,
    sweep_policy,
    tensorboard_events,
    threads,
)
from makemore_lab.callbacks.pruning import OptunaPruning
from makemore_lab.callbacks.thread_budget import ThreadBudget
from makemore_lab.checkpoint_io import AtomicCheckpointIO
from makemore_lab.console import quiet_third_party_messages
from makemore_lab.engine import StepPlan
from makemore_lab.errors import OverParamBudget, UserError, exit_on_user_error
from makemore_lab.models import scores_every_position
from makemore_lab.module import CharLM
from makemore_lab.population import pbt
from makemore_lab.run_dir import RunDirLock

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


def build_partial(node: DictConfig, what: str, **trial_kwargs):
    """A partial (optimizer, schedule), called once now so a wrong key fails here in one line, not mid-fit.

    A typical case: an experiment preset sets `schedule.at` for the step schedule and the command line switches to
    `schedule=cosine`, which takes no `at` (remove it with `~schedule.at`).
    """
    factory = build(node, what)
    try:
        factory(**trial_kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"bad {what} config: {err}") from None
    return factory


def check_model(cfg: DictConfig, net: torch.nn.Module, datamodule) -> int:
    """What only the built model can tell: its outputs' shapes (models/__init__.py's contract), its size against
    max_params, and whether it fits the data settings."""
    config_schema.check_model_contract(net, cfg.model_name, datamodule.vocab_size, datamodule.block_size)
    params = sum(p.numel() for p in net.parameters())
    if cfg.get("max_params") is not None and params > cfg.max_params:
        raise OverParamBudget(f"the model has {params:,} parameters, more than max_params={cfg.max_params:,}")
    if datamodule.train_on == "items" and not scores_every_position(net):
        raise UserError(
            f"data.train_on=items needs a sequence model (rnn, gru, lstm, transformer); {cfg.model_name} predicts "
            "one character per window: use data.train_on=windows"
        )
    has_batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    if has_batchnorm and cfg.data.batch_size < 2:
        raise UserError(
            f"data.batch_size=1 cannot train {cfg.model_name}: BatchNorm needs at least 2 examples per batch"
        )
    return params


def check_final_weights(cfg: DictConfig, callbacks: list) -> None:
    """final_weights=best needs a checkpoint that keeps the best validation's weights, and a validation to keep."""
    if cfg.final_weights != "best":
        return
    if not any(isinstance(c, ModelCheckpoint) and c.monitor and c.save_top_k != 0 for c in callbacks):
        raise UserError(
            "final_weights=best needs the model_checkpoint callback, with a monitor and save_top_k != 0 "
            "(it keeps the best validation's weights)"
        )
    if cfg.trainer.get("limit_val_batches") == 0:
        raise UserError("final_weights=best needs a validation: trainer.limit_val_batches=0 switches it off")
    if cfg.trainer.val_check_interval > cfg.trainer.max_steps:
        raise UserError(
            f"final_weights=best needs a validation before the end: trainer.val_check_interval "
            f"({cfg.trainer.val_check_interval}) is more than trainer.max_steps ({cfg.trainer.max_steps})"
        )


def train(cfg: DictConfig) -> dict:
    config_schema.validate(cfg, config_schema.TRAIN_RULES)
    lightning_flags.check_devices(cfg.trainer)
    quiet_third_party_messages()
    with RunDirLock(cfg.paths.output_dir, resuming=bool(cfg.get("ckpt_path"))):
        return train_in_run_dir(cfg)


def build_run(
    cfg: DictConfig, population: bool = False, shared_data: dict | None = None
) -> tuple[list, StepPlan, object, CharLM]:
    """(callbacks, plan, datamodule, module): what a run trains, built in the order that fixes its initial weights
    (seed, then the data module, then the net). A population member is built by this same function (population=True:
    it may resume from a population member's checkpoint, which has no Lightning loop state; `shared_data`: the
    population's data modules, so that its members read one copy of the corpus)."""
    logging_media.check_loggers(cfg.get("logger"))
    config_schema.check_targets(cfg)  # every _target_ imports and takes its keys: before anything is built
    pl.seed_everything(cfg.seed, workers=True)
    nodes = {name: c for name, c in (cfg.get("callbacks") or {}).items() if c and "_target_" in c}
    callbacks = [build(c, "callbacks") for c in nodes.values()]
    lightning_flags.check_callbacks(nodes)
    allocator.keep_freed_memory()  # before the data and the net: their tensors reuse freed pages
    if threads.choose(cfg.threads):
        callbacks.append(ThreadBudget())
    plan = StepPlan.from_config(cfg, callbacks)
    check_final_weights(cfg, callbacks)
    pbt.check(cfg, population)  # population-based training needs a population
    datamodule = (
        build(cfg.data, "data", steps_per_call=plan.steps_per_batch)
        if shared_data is None
        else shared_datamodule(cfg, plan, shared_data)
    )
    net = build(cfg.model, "model", vocab_size=datamodule.vocab_size, block_size=datamodule.block_size)
    params = check_model(cfg, net, datamodule)
    datamodule.whole_item_eval = scores_every_position(net)  # val/test on whole items: O(characters)
    log.info(
        "%s: %s params, vocab %d, block_size %d, examples %d/%d/%d",
        cfg.model_name,
        f"{params:,}",
        datamodule.vocab_size,
        datamodule.block_size,
        *map(datamodule.num_examples, ("train", "val", "test")),
    )
    checkpoint_meta = {
        "model_name": cfg.model_name,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": {**OmegaConf.to_container(cfg.data, resolve=True), "path": datamodule.source},
        "vocab": list(datamodule.vocab.chars),
        "block_size": datamodule.block_size,
        "optimizer": cfg.optimizer._target_,  # resuming with another optimizer is refused (its state would not fit)
        "data_fingerprint": datamodule.fingerprint,  # eval.py refuses a data file changed since training
        "overrides": commands.run_overrides(),  # what was typed: a sweep run again tells its own jobs apart by it
    }
    if cfg.get("ckpt_path"):
        resume.check_resume_checkpoint(cfg.ckpt_path, checkpoint_meta, net, cfg.trainer.max_steps, population)
    optimizer = build_partial(cfg.optimizer, "optimizer", params=[torch.zeros(1, requires_grad=True)])
    schedule = (
        build_partial(cfg.schedule, "schedule", total_steps=cfg.trainer.max_steps) if cfg.get("schedule") else None
    )
    module = CharLM(
        net,
        optimizer,
        schedule,
        cfg.data.batch_size,
        checkpoint_meta,
        all_positions=datamodule.train_on == "items",
        plan=plan,
    )
    return callbacks, plan, datamodule, module


def shared_datamodule(cfg: DictConfig, plan: StepPlan, shared: dict):
    """Members whose data config differs at most in `data.seed` (the minibatch order) share one encoded corpus:
    each gets a shallow copy of the first one's data module (the same split tensors and vocabulary) with its own
    seed, so a population of N holds the corpus once, not N times (memory grows with the corpus's characters)."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    key = repr(sorted((k, v) for k, v in data.items() if k != "seed")) + f"/{plan.steps_per_batch}"
    if key not in shared:
        shared[key] = build(cfg.data, "data", steps_per_call=plan.steps_per_batch)
        return shared[key]
    datamodule = copy.copy(shared[key])
    datamodule.seed = data["seed"]
    log.info(
        "data: the population's copy of %s (%d characters, read once)",
        datamodule.path or "names.txt",
        sum(len(s) - s.num_items for s in datamodule.splits.values()),
        extra={"train_log_only": True},
    )  # the member's own record; the console has the first member's line
    return datamodule


def train_in_run_dir(cfg: DictConfig) -> dict:
    callbacks, plan, datamodule, module = build_run(cfg)
    callbacks += OptunaPruning.for_run(cfg)  # the sweeper's pruner, where it gave this job a trial (docs/optuna.md)
    out_dir = Path(cfg.paths.output_dir)
    tensorboard_events.quiet_writer_thread_disk_errors()
    loggers = [build(c, "logger") for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
    trainer: pl.Trainer = build(
        cfg.trainer,
        "trainer",
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],  # every checkpoint whole or not at all, in the run dir
        # no ModelCheckpoint configured (callbacks=none): none of Lightning's own either
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        **plan.trainer_arguments(cfg.trainer),
    )
    if trainer.is_global_zero:
        logging_media.prepare(loggers)
    try:
        with resume.sigint_restored():
            segment = resume.fit(trainer, module, datamodule, cfg.get("ckpt_path"), out_dir)
            if not trainer.is_global_zero:
                return {}
            return final_report.report(cfg, final_report.RunEnd.of(trainer), module, datamodule, segment)
    finally:
        logging_media.finish(loggers if trainer.is_global_zero else [])


@exit_on_user_error
def run(cfg: DictConfig) -> float:
    """Entry point body for ./train.py; returns the val loss so Hydra sweepers (Optuna) can minimise it."""
    return sweep_policy.run_job(train, cfg)
