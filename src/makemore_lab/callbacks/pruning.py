"""Pruning decided by Optuna's pruners (`hydra.sweeper.pruner`, docs/optuna.md): a job reports its val loss to its
trial at each validation and stops when the pruner says so.

How a job reaches its trial: the Optuna sweeper gives each job of a search with a pruner the config key
`optuna_trial` (train.yaml): `{study_name, number}`. The study is read where the user put it, `hydra.sweeper.storage`
of the job's own HydraConfig (the same in the sweeper's process, a joblib or submitit/SLURM job, a population
worker); the key never names a file or a database. Without a storage, the study lives in the sweeper's memory
(IN_MEMORY): only a job in that process (Hydra's basic launcher) reaches it, and the sweeper refuses a pruner under
any other launcher without a storage. The pruner is built from the job's `hydra.sweeper.pruner` (a stored study does
not keep its pruner), the same config the sweeper checked before its first trial.

`Pruning` is the reporter, one per job (or per population member): `report(step, val_loss) -> bool` (True: stop
now). When it says stop, it records the step in the trial (user attribute PRUNED_ATTR, which tells the sweeper to
mark the trial PRUNED) and in `pruned` ({"step", "val_loss"}), which `summary_fields()` puts in summary.json.
`OptunaPruning` is the Lightning callback that drives it for a job trained alone.
"""

import logging
import math

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from makemore_lab.errors import UserError

log = logging.getLogger(__name__)

TRIAL_KEY = "optuna_trial"
IN_MEMORY: dict = {}  # study name -> (study, storage) of a study without storage, for this process's jobs


class Pruning:
    """Reports a run's val losses to its Optuna trial; `report` says when the trial's pruner stops it."""

    def __init__(self, trial, max_steps: int):
        self.trial = trial
        self.max_steps = max_steps
        self.pruned: dict | None = None  # {"step": N, "val_loss": v} once pruned

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "Pruning | None":
        """The reporter of this job's trial, or None where the job has none (`optuna_trial` null: no pruner, or
        not an Optuna search). A key set by hand, outside an Optuna search with a pruner, is one line; so is a
        study or trial that cannot be found."""
        node = cfg.get(TRIAL_KEY)
        if node is None:
            return None
        number = node.get("number") if isinstance(node, DictConfig) else None
        name = node.get("study_name") if isinstance(node, DictConfig) else None
        if not isinstance(name, str) or not name or not isinstance(number, int) or isinstance(number, bool):
            shown = OmegaConf.to_container(node) if isinstance(node, DictConfig) else node
            raise UserError(
                f"{TRIAL_KEY} must be null or {{study_name: <name>, number: <trial number>}} (the Optuna sweeper "
                f"sets it for each job of a search with a pruner), got {shown!r}"
            )
        sweeper = sweeper_config()
        from hydra_plugins.makemore_optuna_sweeper.optuna_sweeper import SweeperError, build_pruner

        try:
            pruner = build_pruner(sweeper.get("pruner"))
        except SweeperError as err:
            raise UserError(str(err)) from None
        if pruner is None:
            raise UserError(f"{TRIAL_KEY} is set, but hydra.sweeper.pruner is not: a job reports to a pruner only")
        trial = open_trial(sweeper.get("storage"), name, number, pruner)
        return None if trial is None else cls(trial, cfg.trainer.max_steps)

    def report(self, step: int, val_loss: float) -> bool:
        """Report the val loss at optimizer step `step` (trial.report); True when the run should stop now
        (trial.should_prune). A run that reached its last step is never pruned: it completed."""
        if self.pruned is not None:
            return True
        self.trial.report(val_loss, step)
        if step >= self.max_steps or not self.trial.should_prune():
            return False
        self.pruned = {"step": step, "val_loss": val_loss}
        from hydra_plugins.makemore_optuna_sweeper.optuna_sweeper import PRUNED_ATTR

        self.trial.set_user_attr(PRUNED_ATTR, step)
        log.info(
            "pruned at step %d by %s: val loss %.4f (trial %d of study %r)",
            step,
            type(self.trial.study.pruner).__name__,
            val_loss,
            self.trial.number,
            self.trial.study.study_name,
        )
        return True

    def summary_fields(self) -> dict:
        """summary.json's `pruned` ({"step", "val_loss"}) where the run was pruned."""
        return {"pruned": dict(self.pruned)} if self.pruned else {}


def sweeper_config() -> DictConfig:
    """This job's hydra.sweeper: the Optuna sweeper's, else one line."""
    from hydra.core.hydra_config import HydraConfig

    sweeper = HydraConfig.get().sweeper if HydraConfig.initialized() else None
    if sweeper is None or not str(sweeper.get("_target_", "")).endswith(".OptunaSweeper"):
        raise UserError(
            f"{TRIAL_KEY} is set by the Optuna sweeper (-m hydra/sweeper=optuna with hydra.sweeper.pruner) for its "
            "jobs: remove it"
        )
    return sweeper


def open_trial(storage_url: str | None, study_name: str, number: int, pruner):
    """Trial `number` of study `study_name` in the user's storage (or this process's in-memory study), with
    `pruner`; None (and a warning) where that trial has already ended (a requeued job whose sweep told it)."""
    import optuna

    from hydra_plugins.makemore_optuna_sweeper.optuna_sweeper import sqlite_file

    if storage_url and sqlite_file(storage_url) and not sqlite_file(storage_url).is_file():  # opening would create it
        raise UserError(f"cannot open study {study_name!r}: {storage_url} has no file (deleted since the sweep began?)")
    if storage_url:
        try:
            storage = optuna.storages.RDBStorage(storage_url)
            study = optuna.load_study(study_name=study_name, storage=storage, pruner=pruner)
        except Exception as err:  # a storage gone, a study deleted since the sweep started
            detail = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UserError(f"cannot open study {study_name!r} in {storage_url}: {detail}") from None
    elif study_name in IN_MEMORY:
        study, storage = IN_MEMORY[study_name]
    else:
        raise UserError(
            f"study {study_name!r} has no hydra.sweeper.storage and lives in another process: pruning a job that runs "
            "elsewhere needs a storage (e.g. hydra.sweeper.storage=sqlite:///logs/optuna.db)"
        )
    try:
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)
    except KeyError:
        raise UserError(f"study {study_name!r} has no trial {number} to report to") from None
    frozen = storage.get_trial(trial_id)
    if frozen.state != optuna.trial.TrialState.RUNNING:
        log.warning(
            "trial %d of study %r is %s already: this run reports nothing to it", number, study_name, frozen.state.name
        )
        return None
    return optuna.trial.Trial(study, trial_id)


class OptunaPruning(pl.Callback):
    """A job trained alone: at each validation, its val/loss (trainer.callback_metrics) at trainer.global_step goes
    to its trial; when the pruner says so, the run stops (trainer.should_stop, as EarlyStopping stops it), its
    last.ckpt is saved as at any end, and summary.json says `pruned`. Under DDP, rank zero decides for all."""

    def __init__(self, pruning: Pruning):
        self.pruning = pruning

    @classmethod
    def for_run(cls, cfg: DictConfig) -> list:
        """[the callback] where the config asks for pruning (`optuna_trial` set), else []."""
        pruning = Pruning.from_config(cfg)
        return [] if pruning is None else [cls(pruning)]

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        loss = trainer.callback_metrics.get("val/loss")
        prune = False
        if trainer.is_global_zero and loss is not None and math.isfinite(float(loss)):
            prune = self.pruning.report(trainer.global_step, float(loss))
        if trainer.strategy.broadcast(prune, src=0):
            trainer.should_stop = True

    def summary_fields(self) -> dict:
        return self.pruning.summary_fields()
