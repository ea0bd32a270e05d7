"""What a run prints: third-party noise kept off the console, and a multirun's per-job report cut to one line.

Third-party messages, each silenced at its source and nowhere else:
- Lightning's "💡 Tip: For seamless cloud ..." lines (litlogger, litmodels): `configure_logger` and the callback
  connector log them through `rank_zero_info` on the `pytorch_lightning.utilities.rank_zero` logger whenever no
  LitLogger is in use; Lightning has no switch for them short of using its cloud products.
- Lightning's "`Trainer(val_check_interval=1)` was configured so validation will run after every batch": the
  engine counts a Lightning batch as `steps_per_call` optimizer steps, so the user's `trainer.val_check_interval`
  (in steps) reaches Lightning divided; the line would contradict what the user set.
- "`Trainer.fit` stopped: `max_steps=N` reached." (the progress line of step N says so) and "TPU available: False".
- Lightning's SLURM hint "The `srun` command is available on your system but is not used": printed by every run on
  a machine with SLURM installed, also where the user means to run locally; a SLURM job started by `srun` or
  submitit does not get it anyway.
- torch 2.13's FutureWarning "`isinstance(treespec, LeafSpec)` is deprecated", raised from Lightning's own
  `pytorch_lightning/utilities/_pytree.py` (not from our code, nothing for a user to change).
Filters on that one logger drop records starting with those texts; the logger's other lines ("GPU available: ...")
stay. The model summary table is off in configs/trainer/default.yaml (`enable_model_summary`): its FLOPs column
reads 0 for every model, and the run's own line already gives the parameter count.

A log record with `extra=TRAIN_LOG_ONLY` goes to the run's train.log and not to the console: the console handlers
of the root logger carry the `not_train_log_only` filter (installed by `quiet_third_party_messages`). In a
multirun, each job's full reports (health, samples) go there, and the console gets one line per job
(`job_report_line`), then the sweep's table.
"""

import contextlib
import logging
import warnings

from makemore_lab.commands import in_multirun  # the one rule for "a job of a multirun runs"

QUIET_PREFIXES = (
    "💡 Tip: For seamless cloud",
    "`Trainer(val_check_interval=1)` was configured so validation will run after every batch",
    "`Trainer.fit` stopped: `max_steps=",  # training ran its trainer.max_steps: the last progress line says so
    "TPU available: False",
    "You have turned on `Trainer(detect_anomaly=True)`",  # debug=fast turns it on
)
LIGHTNING_TIP = QUIET_PREFIXES[0]
TRAIN_LOG_ONLY = {"train_log_only": True}


def not_a_lightning_tip(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(QUIET_PREFIXES)


def not_train_log_only(record: logging.LogRecord) -> bool:
    return not getattr(record, "train_log_only", False)


def quiet_third_party_messages() -> None:
    """Idempotent: called by every train() (the CLI's, the Python API's, the tests')."""
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not_a_lightning_tip not in rank_zero.filters:
        rank_zero.addFilter(not_a_lightning_tip)
    for handler in logging.getLogger().handlers:  # Hydra's console handler (its file handler is a FileHandler)
        if not isinstance(handler, logging.FileHandler) and not_train_log_only not in handler.filters:
            handler.addFilter(not_train_log_only)
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"pytorch_lightning\.utilities\._pytree",
    )
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")
    # Anomaly mode (debug=fast) also warns with the forward call's whole traceback (~80 lines) before raising: the
    # divergence is reported in one line (engine.StepEngine.run_batch), so the warning says nothing more.
    warnings.filterwarnings(
        "ignore", message=r"Error detected in \S+\. Traceback of forward call", category=UserWarning
    )


# A population's Trainer restores every member's file, not the one Lightning names: each member says its own line.
POPULATION_PREFIXES = ("Restoring states from the checkpoint path at ", "Restored all states from the checkpoint at ")


def not_a_population_restore_line(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(POPULATION_PREFIXES)


@contextlib.contextmanager
def quiet_population_restore():
    """Around a population's fit (population/run.py): Lightning's restore lines, which name the first member's
    checkpoint only, are left out; each member logs its own resume."""
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    rank_zero.addFilter(not_a_population_restore_line)
    try:
        yield
    finally:
        rank_zero.removeFilter(not_a_population_restore_line)


def job_detail() -> dict:
    """`extra=` for a log line that a single run shows and a multirun job keeps in its train.log."""
    return TRAIN_LOG_ONLY if in_multirun() else {}


def report(text: str, logger: logging.Logger) -> None:
    """A multi-line report (the health report, the samples): printed in a single run, and in train.log always;
    in a multirun train.log only (the console gets the job's one line)."""
    if not in_multirun():
        print(text, flush=True)
    logger.info("%s", text, extra=TRAIN_LOG_ONLY)


def job_report_line(summary: dict) -> str:
    """A multirun job's one console line from its summary.json fields: losses, health verdict, where the rest is."""
    from pathlib import Path

    from makemore_lab.diagnostics.health import verdict_word

    line = f"val {summary['val_loss']:.4f}  test {summary['test_loss']:.4f}"
    if summary.get("health"):
        line += f"  health: {verdict_word(summary['health'])}"
    return line + f"  (report: {Path(summary['output_dir']) / 'train.log'})"
