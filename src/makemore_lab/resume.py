"""Stopping and continuing a run: Ctrl-C and SIGTERM save last.ckpt and print the command that resumes it.

First Ctrl-C (SIGINT) or a SIGTERM (what `kill`, SLURM and Kubernetes send): training stops after the current
Lightning batch, `checkpoints/last.ckpt` is written at that step, the resume command is printed, and the process
exits 130 (SIGINT) or 143 (SIGTERM). A second Ctrl-C aborts at once (exit 130, the last saved checkpoint kept).
SIGUSR2 (what SLURM sends before a time limit or a preemption when asked to, as submitit's jobs ask) stops the same
way, then hands over to the handler that was there before (submitit's requeues the job, whose next run resumes
from last.ckpt); without one, or where it does not requeue, the run ends as interrupted (exit 140), never failed.
"""

import contextlib
import json
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException

from makemore_lab.atomic_write import last_good, write_text_atomically
from makemore_lab.checkpoint import check_resumable, check_weights_fit, net_state_dict, read_checkpoint
from makemore_lab.commands import losses_command, resume_command
from makemore_lab.errors import TrainingDiverged, TrainingInterrupted, UserError

log = logging.getLogger(__name__)
SEGMENTS_FILE = "segments.json"  # a run dir's interrupted fits (steps, seconds): the sweep table sums its time


@dataclass(frozen=True)
class Segment:
    """One fit: the steps it made and its wall time (a resumed run is a second segment of the same run)."""

    steps: int
    seconds: float
    resumed_from_step: int


def check_resume_checkpoint(
    ckpt_path: str, checkpoint_meta: dict, net, max_steps: int, population: bool = False
) -> None:
    """A checkpoint to resume from must be ours, hold the model this config builds, be trained on the same data and
    leave steps to train: else one line here, not a traceback deep inside Lightning or a run that silently means
    something else. read_checkpoint loads it with weights_only=True, before Lightning loads it (also weights_only)."""
    checkpoint = read_checkpoint(ckpt_path)
    check_resumable(checkpoint, ckpt_path, checkpoint_meta, max_steps, population)
    check_weights_fit(net, net_state_dict(checkpoint), Path(ckpt_path))


@contextlib.contextmanager
def stop_cleanly_on_sigint(trainer: pl.Trainer, last: Path, signals: bool = True):
    """First Ctrl-C: finish the current batch, then stop; a second Ctrl-C aborts at once (exit 130)."""
    stop = {"requested": False}
    if not signals or threading.current_thread() is not threading.main_thread():  # handlers live in the main thread
        yield stop
        return

    def abort(signum, frame):
        raise TrainingInterrupted("aborted by a second Ctrl-C; the last saved checkpoint is kept")

    def request_stop(signum, frame):
        stop["requested"] = True
        trainer.should_stop = True  # Lightning ends the fit after the current batch
        signal.signal(signal.SIGINT, abort)
        print(
            "\nCtrl-C: stopping after the current step and saving a checkpoint (Ctrl-C again to abort)",
            file=sys.stderr,
            flush=True,
        )

    def after_training(signum, frame):  # the final save and report: training is over, its weights are saved
        raise TrainingInterrupted(
            f"Ctrl-C after training had finished (step {trainer.global_step}): summary.json was not written; the "
            f"last saved weights are in {last}. Their losses: "
            f"{losses_command(last, getattr(getattr(trainer, 'datamodule', None), 'source', None))}"
        )

    def request_stop_for_scheduler(signum, frame):  # nothing written here: a handler that logs can re-enter a stream
        stop["requested"] = stop["scheduler"] = True
        trainer.should_stop = True

    signal.signal(signal.SIGINT, request_stop)
    stop["scheduler_handler"] = signal.signal(signal.SIGUSR2, request_stop_for_scheduler)
    try:
        yield stop
    finally:  # not the start-up handler: its "nothing was saved" is no longer true (sigint_restored puts it back)
        signal.signal(signal.SIGINT, abort if stop["requested"] else after_training)
        signal.signal(signal.SIGUSR2, stop["scheduler_handler"])


@contextlib.contextmanager
def sigint_restored():
    """Around fit and the final report: the SIGINT handler from before (the entry point's, for start-up) comes back
    after them; in between, stop_cleanly_on_sigint's handlers say which phase a Ctrl-C stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def fit(
    trainer: pl.Trainer,
    module,
    datamodule,
    ckpt_path: str | None,
    out_dir: Path,
    jobs: "JobDirs | None" = None,
) -> Segment:
    """trainer.fit, then save the final weights to last.ckpt. Stops cleanly on Ctrl-C, SIGTERM and divergence.

    `jobs`: given when the fit trains a population (population/run.py), whose checkpoint plugin writes each active
    member's own file for every save at `out_dir`'s paths; it says where a stop is recorded and how it resumes."""
    last = out_dir / "checkpoints" / "last.ckpt"
    jobs = jobs or JobDirs([out_dir])
    start = time.perf_counter()
    terminated = False
    try:
        with stop_cleanly_on_sigint(trainer, last, jobs.signals) as stop:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)  # data, never code
    except TrainingDiverged as err:
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was saved before it"
        raise TrainingDiverged(f"{err}; {kept}") from None
    except SIGTERMException:  # Lightning stops at the end of the batch in which SIGTERM arrived
        terminated = True
    except RuntimeError:  # DDP: a peer rank that stopped first (SIGTERM, SIGUSR2) broke the process group
        if trainer.world_size == 1 or not (trainer.received_sigterm or stop["requested"]):
            raise
        raise TrainingInterrupted(
            f"stopped at step {trainer.global_step} with another rank, whose process group "
            f"ended; the last saved checkpoint is kept. Resume with: {jobs.resume}",
            exit_code=128 + (signal.SIGUSR2 if stop.get("scheduler") else signal.SIGTERM),
        ) from None
    except OSError as err:  # disk full, read-only or gone
        raise jobs.cannot_write(err, trainer.global_step) from None
    seconds = time.perf_counter() - start
    try:
        trainer.save_checkpoint(last, weights_only=False)  # the final (or interrupted) weights, whatever the cadence
    except OSError as err:
        raise jobs.cannot_write(err, trainer.global_step) from None
    if stop["requested"] or terminated:
        for job_dir in jobs.dirs():
            record_interrupted_segment(trainer, module, seconds, job_dir)
    where = jobs.where(trainer.global_step, trainer.max_steps)
    if stop.get("scheduler"):
        hand_over_to_scheduler(stop["scheduler_handler"], where, jobs.resume)
    if stop["requested"] or terminated:
        signal_name, code = ("SIGTERM", 143) if terminated else ("Ctrl-C", 130)
        raise TrainingInterrupted(f"{signal_name}: {where}. Resume with: {jobs.resume}", exit_code=code)
    first_step = module.first_step  # where this fit began: 0, or the resumed checkpoint's step
    return Segment(trainer.global_step - first_step, seconds, first_step)


@dataclass
class JobDirs:
    """What fit says and records when it stops: a run is its one dir; a population (population/run.py) overrides
    these for its members (only those still training are stopped, and recorded)."""

    out_dirs: list[Path]
    command: str | None = None  # the command that resumes it (a run's: resume_command, made when it stops)
    who: str = ""  # "population of 4 ": the stop message's subject
    saved: str = "checkpoint saved"
    signals: bool = True  # False: the process's signals are another's (a population trained in a worker process)

    @property
    def resume(self) -> str:
        return self.command or resume_command(self.out_dirs[0])

    def dirs(self) -> list[Path]:
        return self.out_dirs

    def where(self, step: int, max_steps: int) -> str:
        """What a stop says it stopped and saved: `stopped at step S of M; checkpoint saved`."""
        return f"{self.who}stopped at step {step} of {max_steps}; {self.saved}"

    def cannot_write(self, err: OSError, step: int) -> Exception:
        return cannot_write(err, step, self.out_dirs[0])


def cannot_write(err: OSError, step: int, out_dir: Path) -> UserError:
    """A failed write as one line: the file (a write to an open file, TensorBoard's or a log, names none: the run
    dir is where it went) and the last good checkpoint (saves are atomic, so one that is there is whole). Runs and
    population members alike (population/run.py)."""
    return UserError(
        f"cannot write the run's files ({err.strerror}: {err.filename or out_dir}) at step {step}; {last_good(out_dir)}"
    )


def record_interrupted_segment(trainer: pl.Trainer, module, seconds: float, out_dir: Path) -> None:
    """Append this fit to <run dir>/segments.json (atomically): a resumed run's summary.json times its last fit only,
    and the sweep table adds these (sweep_summary.py). A fit killed outright (SIGKILL) leaves no record."""
    if not trainer.is_global_zero:
        return
    path = out_dir / SEGMENTS_FILE
    segments = json.loads(path.read_text()) if path.is_file() else []
    segments.append(
        {"steps": trainer.global_step - module.first_step, "seconds": seconds, "resumed_from_step": module.first_step}
    )
    write_text_atomically(path, json.dumps(segments) + "\n")


def hand_over_to_scheduler(handler, where: str, resume: str):
    """After SIGUSR2, with every checkpoint saved (`where` says at which step): the handler that was there before
    runs now, outside any signal handler (submitit's checkpoints the job, requeues it and exits; its next run resumes
    from last.ckpt). A job it does not requeue (requeued max_num_timeout times already, or no handler) is
    interrupted, not failed: no failure.json, and running its sweep again resumes it (`resume`: the command). Runs
    and populations alike (population/processes.py)."""
    outcome = "not requeued"
    if callable(handler):
        log.warning("SIGUSR2 (a time limit or preemption is near): %s; handing over to the scheduler", where)
        try:
            handler(signal.SIGUSR2, None)  # submitit: requeues the job and exits (SystemExit), or raises
        except Exception as err:
            outcome = f"not requeued ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    raise TrainingInterrupted(
        f"SIGUSR2 (time limit or preemption): {where}, {outcome}. Resume with: {resume}", exit_code=128 + signal.SIGUSR2
    )
