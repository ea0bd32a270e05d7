"""One member of a population: a solo run's pieces (built by train.build_run, the same code), in its own job dir.

A member owns what a solo run owns: its config, its run-dir lock, its data module, its CharLM (net, schedule,
checkpoint metadata, initial loss), its torch optimizer, its loggers, its train.log, and its step callbacks (the
diagnostics and the sample text, below). The population's one Trainer (population/run.py) trains every member;
what a job dir holds is written here, through the solo code paths.

Step callbacks in a population (the contract for callback authors; docs/population.md). The callbacks in
STEP_CALLBACKS run per member, each on its member alone, and they see a `MemberTrainer` (the trainer attributes
they read, and no others): `on_train_start`, then their `StepClock` hooks on the member's
own torch optimizer, then `on_train_end` (or `on_exception`). On every step a callback's clock is due at
(`StepClock.due_step`), the population trains each member with the solo run's own step (its own net's forward and
backward, its optimizer's `step()`), so forward hooks, gradients and the weights' update are exactly what the
callback would see in a solo run; on the other steps the clock only counts (`StepClock.count_to`). The member's
other callbacks are the population's Trainer's (`population_callbacks`), except its best checkpoint and early
stopping on val/loss, which the population keeps per member (`validated`).
"""

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

from makemore_lab import commands, config_schema, final_report, logging_media
from makemore_lab.callbacks.pruning import Pruning
from makemore_lab.callbacks.sample_text import SampleText
from makemore_lab.checkpoint import net_state_dict, read_checkpoint
from makemore_lab.console import not_train_log_only
from makemore_lab.diagnostics import Diagnostics
from makemore_lab.errors import TrainingInterrupted
from makemore_lab.population.pbt import PBT
from makemore_lab.resume import Segment
from makemore_lab.run_dir import RunDirLock
from makemore_lab.train import build, build_run

LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job log format
STEP_CALLBACKS = (Diagnostics, SampleText)  # the callbacks that run per member (the contract above)


class Labelled(logging.Formatter):
    """A console handler's own formatter, with `[label] ` before each message (the record itself is left as it
    was: the member's train.log, formatted after, gets the message alone)."""

    def __init__(self, inner: logging.Formatter | None, label: str):
        super().__init__()
        self.inner, self.label = inner or logging.Formatter(), label

    def format(self, record: logging.LogRecord) -> str:
        msg, args = record.msg, record.args
        record.msg, record.args = f"[{self.label}] {record.getMessage()}", None
        try:
            return self.inner.format(record)
        finally:
            record.msg, record.args = msg, args


@dataclass
class MemberTrainer:
    """What the step callbacks read of a trainer, for one member (their contract: docs/population.md)."""

    loggers: list
    optimizers: list
    datamodule: object
    default_root_dir: str
    max_steps: int
    global_step: int = 0
    callbacks: list = field(default_factory=list)
    is_global_zero: bool = True


@dataclass
class Member:
    cfg: DictConfig
    out_dir: Path
    lock: RunDirLock | None = None
    datamodule: object = None
    module: object = None  # CharLM
    optimizer: torch.optim.Optimizer | None = None
    loggers: list = field(default_factory=list)
    start_step: int = 0
    population_callbacks: list = field(default_factory=list)  # the rest of its callbacks: the population's Trainer's
    lineage: list = field(default_factory=list)  # its PBT exploits: [{step, from, hyperparameters, ...}] (pbt.py)
    pruning: object = None  # its Optuna trial's reporter (callbacks/pruning.py), where its search prunes
    save_to: object = None  # path -> None: writes this member's checkpoint there (the population's Trainer, run.py)
    best_monitor: ModelCheckpoint | None = None  # the model_checkpoint callback's settings (None: not configured)
    early_stopping: EarlyStopping | None = None  # its patience and min_delta (None: trains to max_steps)
    best_path: str = ""
    best_val: float = float("inf")
    stale_validations: int = 0  # validations since the last improvement by min_delta (early stopping)
    stopping_best: float = float("inf")  # the val loss of that improvement (Lightning's EarlyStopping.best_score)
    callbacks: list = field(default_factory=list)  # its STEP_CALLBACKS, as configured
    trainer: MemberTrainer | None = None
    result: dict | BaseException | None = None  # set when the member is done: its summary or what ended it

    @property
    def active(self) -> bool:
        return self.result is None

    @property
    def net(self) -> torch.nn.Module:
        return self.module.net

    @property
    def label(self) -> str:
        """The member as its console lines name it: `#3` for Hydra's job dir `3` (the launcher's `#3 : overrides`
        line), else the job dir's name."""
        name = self.out_dir.name
        return f"#{name}" if name.isdigit() else name

    @contextlib.contextmanager
    def logging_to_train_log(self):
        """This member's log lines (and the package's, while it works for this member) go to its train.log, as a
        solo run's; on the console (every other handler of the root logger but files) each starts with the member's
        label, so that the lines of a population's members tell apart, and a record logged with
        `extra={"train_log_only": True}` is left out there."""
        handler = logging.FileHandler(self.out_dir / "train.log")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root = logging.getLogger()
        level = root.level
        consoles = [(h, h.formatter) for h in root.handlers if not isinstance(h, logging.FileHandler)]
        for console, formatter in consoles:
            console.setFormatter(Labelled(formatter, self.label))
            console.addFilter(not_train_log_only)
        root.addHandler(handler)
        root.setLevel(min(level or logging.INFO, logging.INFO))  # INFO, as Hydra's job logging has it in a solo run
        try:
            yield
        finally:
            root.removeHandler(handler)
            root.setLevel(level)
            handler.close()
            for console, formatter in consoles:
                console.setFormatter(formatter)
                console.removeFilter(not_train_log_only)

    def set_up(self, device: torch.device, shared_data: dict | None = None) -> None:
        """Build the member as train() builds a solo run; on resume, load its checkpoint (weights, optimizer state,
        step). A UserError here ends this member alone. `shared_data`: the population's data modules (one encoded
        corpus for all members; train.shared_datamodule)."""
        cfg = self.cfg
        config_schema.validate(cfg, config_schema.TRAIN_RULES)
        own_last = self.out_dir / "checkpoints" / "last.ckpt"
        if cfg.get("ckpt_path") and Path(cfg.ckpt_path) == own_last and not own_last.exists():
            # The population's resume command names every job's own last.ckpt; a job that had not started when the
            # population stopped (a later population of the sweep) has none yet: it starts afresh.
            logging.getLogger(__name__).info("no %s yet: this job starts from step 0", own_last)
            cfg.ckpt_path = None
        self.lock = RunDirLock(self.out_dir, resuming=bool(cfg.get("ckpt_path"))).__enter__()
        callbacks, _, self.datamodule, self.module = build_run(cfg, population=True, shared_data=shared_data)
        job_overrides = self.out_dir / ".hydra" / "overrides.yaml"  # the launcher's, written before training
        if job_overrides.exists():  # the member's own, not the sweep's (HydraConfig during a population)
            self.module.checkpoint_meta["overrides"] = commands.run_overrides(OmegaConf.load(job_overrides))
        self.module.net.to(device)
        self.optimizer = self.module.make_optimizer(cfg.trainer.max_steps)
        for callback in callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.monitor == "val/loss":
                self.best_monitor = callback
            elif isinstance(callback, EarlyStopping):  # val/loss, mode min: grouping.population_refusal
                self.early_stopping = callback
            elif isinstance(callback, STEP_CALLBACKS):
                self.callbacks.append(callback)
            else:  # last.ckpt's cadence, a progress bar, a user's own: the first member's train the population
                self.population_callbacks.append(callback)
        self.pruning = Pruning.from_config(cfg)
        if cfg.get("ckpt_path"):
            self._load(cfg.ckpt_path)
        self.module.start_optimizer(self.optimizer, self.start_step)
        if self.lineage:  # PBT gave it other hyperparameters than its config's: it follows its last ones
            PBT.apply(self, self.lineage[-1]["hyperparameters"])
        self.loggers = [build(c, "logger") for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
        logging_media.prepare(self.loggers)  # as a run's: each logger's run started now, a fault one line
        self.trainer = MemberTrainer(
            self.loggers,
            [self.optimizer],
            self.datamodule,
            str(self.out_dir),
            cfg.trainer.max_steps,
            self.start_step,
            self.callbacks,
        )

    @property
    def clocks(self) -> list:
        return [callback.clock for callback in self.callbacks]

    def start_callbacks(self) -> None:
        """The step callbacks' on_train_start: after the population stacked the weights (they hook the member's own
        modules and optimizer, which the stacked copies must not carry)."""
        for callback in self.callbacks:
            callback.on_train_start(self.trainer, self.module)

    def _load(self, ckpt_path: str) -> None:
        checkpoint = read_checkpoint(ckpt_path)
        self.net.load_state_dict(net_state_dict(checkpoint))
        self.optimizer.load_state_dict(checkpoint["optimizer_states"][0])
        self.module.on_load_checkpoint(checkpoint)
        self.start_step = checkpoint["global_step"]
        state = checkpoint.get("population_member", {})  # a solo run's checkpoint has none: start the counts afresh
        self.best_path, self.best_val = state.get("best_path", ""), state.get("best_val", float("inf"))
        self.stale_validations = state.get("stale_validations", 0)
        self.stopping_best = state.get("stopping_best", self.best_val)
        self.lineage = list(state.get("lineage", []))
        saved = checkpoint.get("callbacks") or {}  # Lightning's layout: a solo run's checkpoint resumes them alike
        for callback in self.callbacks:
            if callback.state_key in saved:
                callback.load_state_dict(saved[callback.state_key])
        logging.getLogger(__name__).info("resumed from %s at step %d", ckpt_path, self.start_step)

    def finished_summary(self) -> dict | None:
        """A resumed population's member that had already finished (stopped early): its summary, not a rerun."""
        path = self.out_dir / "summary.json"
        return json.loads(path.read_text()) if self.cfg.get("ckpt_path") and path.is_file() else None

    def book(self) -> dict:
        """What a population keeps of this member beyond a run's checkpoint: its best checkpoint and early-stopping
        counts (run.MemberCheckpointIO writes it into each of its checkpoints)."""
        return {
            "best_path": self.best_path,
            "best_val": self.best_val,
            "stale_validations": self.stale_validations,
            "stopping_best": self.stopping_best,
            "lineage": self.lineage,
        }

    def save_last(self, step: int) -> None:
        self.save_to(self.out_dir / "checkpoints" / "last.ckpt")

    def validated(self, val_loss: float, step: int) -> bool:
        """Record a validation (its log entry, the best checkpoint); returns whether the member should stop early."""
        # improved, as Lightning's EarlyStopping counts it: by more than min_delta since the last improvement
        min_delta = abs(self.early_stopping.min_delta) if self.early_stopping is not None else 0.0
        if val_loss < self.stopping_best - min_delta:
            self.stopping_best, self.stale_validations = val_loss, 0
        else:
            self.stale_validations += 1
        if val_loss < self.best_val and self.best_monitor is not None:
            old, name = self.best_path, self.best_monitor.filename.format(step=step) + ".ckpt"
            self.best_path = str(Path(self.best_monitor.dirpath) / name)
            self.save_to(Path(self.best_path))
            if old and old != self.best_path:
                Path(old).unlink(missing_ok=True)  # save_top_k=1, as the solo run's ModelCheckpoint keeps
        self.best_val = min(self.best_val, val_loss)
        return self.early_stopping is not None and self.stale_validations >= self.early_stopping.patience

    def finish(self, step: int, seconds: float, population_size: int, extra: dict | None = None) -> None:
        """The solo run's end: last.ckpt, then final_report's exact losses, samples, hparams and summary.json.
        `seconds` is the population's wall time: the member's steps/s is honest about sharing the machine."""
        self.save_last(step)
        self.trainer.global_step = step
        for callback in self.callbacks:  # the health report and figures, before the summary that holds the verdict
            callback.on_train_end(self.trainer, self.module)
        segment = Segment(step - self.start_step, seconds, self.start_step)
        self.result = final_report.report(
            self.cfg,
            final_report.RunEnd(step, self.loggers, self.callbacks, self.best_path),
            self.module,
            self.datamodule,
            segment,
            extra={
                "population_size": population_size,
                **(self.pruning.summary_fields() if self.pruning else {}),
                **(extra or {}),
            },
        )
        self.release()

    def fail(self, error: BaseException) -> None:
        self.result = error
        logging.getLogger(__name__).error("%s", error)
        self.release(error)

    def release(self, error: BaseException | None = None) -> None:
        """The end of the member in this process: its loggers flushed, its run dir unlocked; after an error (its
        own, or a signal that stopped the population) the step callbacks' on_exception takes their hooks off."""
        if error is not None and self.trainer is not None:
            for callback in self.callbacks:
                callback.on_exception(self.trainer, self.module, error)
        for logger in self.loggers:  # what a Trainer does for a run's loggers at the end of its fit
            logger.save()
            logger.finalize("failed" if error is not None and not isinstance(error, TrainingInterrupted) else "success")
        logging_media.finish(self.loggers)  # each W&B run ended: the next member's logger starts its own
        if self.lock is not None:
            self.lock.__exit__()
            self.lock = None
