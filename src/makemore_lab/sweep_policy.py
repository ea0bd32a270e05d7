"""What a failing job does to a sweep: in a multirun it becomes a failed row with its reason, and the sweep goes on.

A single run (`python train.py ...`) fails as usual: one line on stderr, a non-zero exit. In a multirun (`-m`,
with any launcher: basic, joblib, submitit) a job that fails — a bad value, a crash, a divergence, a model over
the parameter budget — writes `failure.json` (its one-line reason) in its job dir, logs the reason, and returns
+inf, so the launcher goes on to the next job, the Optuna sweeper tells the study the trial failed,
and the sweep summary lists the job as failed with the reason.

The same sweep run again into its own sweep dir (run_dir.check_sweep_dir admits only that) continues it: a job that
finished keeps its result (its val loss is returned, nothing retrained), one that failed keeps its failure, one
that was interrupted (last.ckpt, no summary.json) resumes from its last.ckpt, and the rest run. A job dir whose
earlier job had other overrides (a sampler that drew other values) is refused without writing into it.
An interrupted job stops the sweep (Ctrl-C, SIGTERM), except a SLURM job stopped by its time limit and not
requeued (resume.py): that job alone ends, unfinished, and the sweep goes on.
"""

import json
import logging
import math
import os
import signal
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from makemore_lab.atomic_write import last_good, write_json_atomically
from makemore_lab.commands import in_multirun, run_overrides
from makemore_lab.errors import TrainingInterrupted, UserError
from makemore_lab.run_dir import RunDirRefused

log = logging.getLogger(__name__)

FAILURE_FILE = "failure.json"


def run_job(train, cfg, continue_sweep: bool = True) -> float:
    """`train(cfg)`'s val loss; under a multirun a failure is recorded and returned as +inf instead of raised.
    `continue_sweep=False`: the caller has already looked for the job's earlier result (earlier_outcome), as the
    population launcher does before training its jobs together; `train` runs (or replays) without a second look."""
    if not in_multirun():
        return train(cfg).get("val_loss", math.nan)
    return job_result(train, cfg, HydraConfig.get().job.num, continue_sweep)


def job_result(train, cfg, job: int, continue_sweep: bool = True) -> float:
    try:
        earlier = earlier_result(cfg, job) if continue_sweep else None
        return earlier if earlier is not None else train(cfg).get("val_loss", math.nan)
    except TrainingInterrupted as err:
        if not (in_scheduler_job() and err.exit_code == 128 + signal.SIGUSR2):
            raise  # Ctrl-C / SIGTERM stop the whole sweep; a SLURM job's SIGTERM may be a requeue (preemption)
        # A SLURM job stopped by its time limit and not requeued (resume.py) is one job of the sweep: its result is
        # "none yet" (no failure.json, the table lists it as unfinished, the sweep's rerun resumes it), returned at
        # once so that the submitting process learns it now, not when it next polls SLURM.
        log.warning("job %s interrupted: %s", job, err)
        return math.nan
    except RunDirRefused as err:  # another run's dir: record nothing in it
        log.error("job %s refused: %s", job, err)
        return math.inf
    except UserError as err:
        reason = str(err)
    except Exception as err:  # a crash is one job's result, not the sweep's end; its traceback goes to the job log
        if not_requeued(err):  # SIGUSR2 before or after training: submitit's handler ran at once, nothing to save
            log.warning("job %s interrupted: SIGUSR2 (time limit), %s", job, err)
            return math.nan
        log.debug("job crashed:\n%s", traceback.format_exc())
        reason = f"crashed: {type(err).__name__}: {err}".splitlines()[0]
    log.error("job %s failed: %s", job, reason)
    out_dir = Path(cfg.paths.output_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomically(out_dir / FAILURE_FILE, {"error": reason})
    except OSError as err:  # a full disk: the sweep cannot record its jobs any more, so it stops here, in one line
        kept = "" if "checkpoint" in reason else f"; {last_good(out_dir)}"
        raise UserError(
            f"cannot write {err.filename} ({err.strerror}), so the sweep stops: job {job} failed: {reason}{kept}",
            exit_code=1,
        ) from None
    return math.inf


def in_scheduler_job() -> bool:
    """This process runs one job of the sweep for a scheduler (submitit: hydra/launcher=slurm, slurm_cpu,
    submitit_local), not the sweep itself."""
    return "SUBMITIT_FOLDER" in os.environ


def not_requeued(err: Exception) -> bool:
    """submitit's "job not requeued" (a time limit after max_num_timeout requeues), raised by its SIGUSR2 handler
    where that signal came outside training (resume.py handles it during training): an interruption, not a crash."""
    if not in_scheduler_job():
        return False
    from submitit.core.utils import UncompletedJobError  # a submitit job: submitit is there

    return isinstance(err, UncompletedJobError)


def earlier_result(cfg, job, task_overrides=None, announce_resume: bool = True) -> float | None:
    """What this job's dir holds from an earlier run of the same sweep: its val loss if it finished (or +inf if it
    failed), None if it is to train — from its last.ckpt (set as cfg.ckpt_path) if it was interrupted.
    `task_overrides`: the job's (by default HydraConfig's, the job's while it runs). `announce_resume=False`: the
    resume is left to the run that trains to log (the population launcher looks before it trains)."""
    out_dir, overrides = Path(cfg.paths.output_dir), run_overrides(task_overrides)
    summary_file, last = out_dir / "summary.json", out_dir / "checkpoints" / "last.ckpt"
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        check_same_job(out_dir, summary.get("overrides"), overrides)
        log.info("job %s finished in an earlier run of this sweep: kept (val_loss %s)", job, summary.get("val_loss"))
        return summary.get("val_loss", math.nan)
    if (out_dir / FAILURE_FILE).is_file():
        log.info(
            "job %s failed in an earlier run of this sweep: kept (delete %s to retry it)", job, out_dir / FAILURE_FILE
        )
        return math.inf
    if last.is_file() and not cfg.get("ckpt_path"):
        from makemore_lab.checkpoint import read_checkpoint  # torch: only where there is a checkpoint to read

        check_same_job(out_dir, read_checkpoint(last)["makemore_lab"].get("overrides"), overrides)
        if announce_resume:
            log.info("job %s was interrupted in an earlier run of this sweep: resuming from %s", job, last)
        with open_dict(cfg):
            cfg.ckpt_path = str(last)
    return None


def earlier_outcome(cfg, job, task_overrides) -> float | None:
    """earlier_result for a launcher that looks before it trains (the population launcher, with the job's task
    overrides): a job dir that holds another job is that job's result as job_result records it (+inf, nothing
    written in it). An interrupted job's resume is logged once, by what trains it: a member ("resumed from <last.ckpt>
    at step N"), or a job alone, whose own run looks again."""
    try:
        return earlier_result(cfg, job, task_overrides, announce_resume=False)
    except RunDirRefused as err:
        log.error("job %s refused: %s", job, err)
        return math.inf


def check_same_job(out_dir: Path, recorded, overrides: list[str]) -> None:
    if recorded != overrides:
        raise RunDirRefused(
            f"job dir {out_dir} holds a job with other overrides ({' '.join(recorded or ['unknown'])}): left as it is"
        )
