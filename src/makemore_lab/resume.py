"""Stopping and continuing a run: Ctrl-C and SIGTERM save last.ckpt and print the command that resumes it.

First Ctrl-C (SIGINT) or a SIGTERM (what `kill`, SLURM and Kubernetes send): training stops after the current
Lightning batch, `checkpoints/last.ckpt` is written at that step, the resume command is printed, and the process
exits 130 (SIGINT) or 143 (SIGTERM). A second Ctrl-C aborts at once (exit 130, the last saved checkpoint kept).
"""

import contextlib
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException

from makemore_lab.checkpoint import check_weights_fit, describe, net_state_dict, read_checkpoint
from makemore_lab.commands import resume_command
from makemore_lab.errors import TrainingDiverged, TrainingInterrupted, UserError


@dataclass(frozen=True)
class Segment:
    """One fit: the steps it made and its wall time (a resumed run is a second segment of the same run)."""

    steps: int
    seconds: float
    resumed_from_step: int


def check_resume_checkpoint(ckpt_path: str, checkpoint_meta: dict, net, max_steps: int, population: bool = False) -> None:
    """A checkpoint to resume from must be ours, hold the model this config builds, be trained on the same data and
    leave steps to train: else one line here, not a traceback deep inside Lightning or a run that silently means
    something else. read_checkpoint loads it with weights_only=True, before Lightning loads it (also weights_only)."""
    checkpoint = read_checkpoint(ckpt_path)
    meta = checkpoint["makemore_lab"]
    for key in ("model", "vocab", "block_size", "optimizer"):
        if key in meta and meta[key] != checkpoint_meta[key]:
            raise UserError(
                f"checkpoint {ckpt_path} was trained with a different {key} ({meta.get(key)}) than this config "
                f"builds ({checkpoint_meta[key]}): resume with the run's original overrides"
            )
    recorded = meta.get("data_fingerprint")
    if recorded and recorded != checkpoint_meta["data_fingerprint"]:  # its val/test would hold training items
        raise UserError(f"checkpoint {ckpt_path} was trained on other data ({describe(recorded)}) than data.path gives "
                        f"({describe(checkpoint_meta['data_fingerprint'])}): resume with the run's own data file")
    # A population resumes its members' checkpoints (no Lightning loop state: population/member.py) and solo ones.
    needed = ("optimizer_states", "global_step") if population else ("optimizer_states", "loops", "global_step")
    if not population and "population_member" in checkpoint and "loops" not in checkpoint:
        raise UserError(f"checkpoint {ckpt_path} is a population member's: resume it with its sweep's command "
                        "(hydra/launcher=population), or sample and evaluate it")
    if not all(key in checkpoint for key in needed):
        raise UserError(f"checkpoint {ckpt_path} holds weights only (no optimizer or loop state): it can be sampled "
                        "and evaluated, not resumed")
    check_weights_fit(net, net_state_dict(checkpoint), Path(ckpt_path))
    step = checkpoint["global_step"]
    if step >= max_steps:
        raise UserError(f"checkpoint {ckpt_path} is at step {step:,}, and trainer.max_steps={max_steps:,}: nothing "
                        f"to train. To train longer, raise trainer.max_steps (e.g. trainer.max_steps={2 * step})")


@contextlib.contextmanager
def stop_cleanly_on_sigint(trainer: pl.Trainer, last: Path):
    """First Ctrl-C: finish the current batch, then stop; a second Ctrl-C aborts at once (exit 130)."""
    stop = {"requested": False}
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield stop
        return

    def abort(signum, frame):
        raise TrainingInterrupted("aborted by a second Ctrl-C; the last saved checkpoint is kept")

    def request_stop(signum, frame):
        stop["requested"] = True
        trainer.should_stop = True  # Lightning ends the fit after the current batch
        signal.signal(signal.SIGINT, abort)
        print("\nCtrl-C: stopping after the current step and saving a checkpoint (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    def after_training(signum, frame):  # the final save and report: training is over, its weights are saved
        raise TrainingInterrupted(
            f"Ctrl-C after training had finished (step {trainer.global_step}): summary.json was not written; the "
            f"last saved weights are in {last}. Their losses: python eval.py ckpt_path={shlex.quote(str(last))}")

    signal.signal(signal.SIGINT, request_stop)
    try:
        yield stop
    finally:  # not the start-up handler: its "nothing was saved" is no longer true (sigint_restored puts it back)
        signal.signal(signal.SIGINT, abort if stop["requested"] else after_training)


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


def fit(trainer: pl.Trainer, module, datamodule, ckpt_path: str | None, out_dir: Path) -> Segment:
    """trainer.fit, then save the final weights to last.ckpt. Stops cleanly on Ctrl-C, SIGTERM and divergence."""
    last = out_dir / "checkpoints" / "last.ckpt"
    start = time.perf_counter()
    terminated = False
    try:
        with stop_cleanly_on_sigint(trainer, last) as stop:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)  # data, never code
    except TrainingDiverged as err:
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was saved before it"
        raise TrainingDiverged(f"{err}; {kept}") from None
    except SIGTERMException:  # Lightning stops at the end of the batch in which SIGTERM arrived
        terminated = True
    except OSError as err:  # disk full, read-only or gone: saves are atomic, so the last good checkpoint is whole
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was saved"
        # A write to an open file (TensorBoard's, a log) names no file: the run dir is where it went.
        raise UserError(f"cannot write the run's files ({err.strerror}: {err.filename or out_dir}) at step "
                        f"{trainer.global_step}; {kept}") from None
    seconds = time.perf_counter() - start
    trainer.save_checkpoint(last, weights_only=False)  # the final (or interrupted) weights, whatever the checkpoint cadence
    if stop["requested"] or terminated:
        signal_name, code = ("SIGTERM", 143) if terminated else ("Ctrl-C", 130)
        raise TrainingInterrupted(
            f"{signal_name}: stopped at step {trainer.global_step} of {trainer.max_steps}; checkpoint saved. "
            f"Resume with: {resume_command(out_dir)}",
            exit_code=code,
        )
    first_step = module.first_step  # where this fit began: 0, or the resumed checkpoint's step
    return Segment(trainer.global_step - first_step, seconds, first_step)
