"""A run dir or sweep dir belongs to one run, from before Hydra writes anything into it.

- One run per run dir: a second train.py in the same `hydra.run.dir` is refused while the first runs (a lock on
  `<run dir>/.lock`, filelock's: the OS drops it when its process ends, however it ends, so a killed run never
  leaves it stuck); a finished run (summary.json) is not overwritten by a new one, and an interrupted one (last.ckpt, no
  summary.json) is not restarted from scratch: both are refused with what to do instead. Continuing a run with
  `ckpt_path=` is allowed, once the checkpoint is known to continue this config (resume_refusal): a refused resume
  is refused before Hydra writes the run's `.hydra/` and `train.log`, so the finished run keeps its own.
- Hydra writes `<run dir>/.hydra/` before the task starts, so the claim is made earlier, by the Hydra callback
  OutputDirCheck (on_run_start runs before Hydra's run_job): a refused run leaves the dir exactly as it was. The
  config's rules (config_schema.TRAIN_RULES) are checked there first: a bad setting makes no run dir at all.
  train() takes the same lock itself when called without Hydra (tests, scripts); in a process that already holds
  it (claimed by the callback) it is not taken twice.
- One sweep per sweep dir: a multirun into a non-empty `hydra.sweep.dir` is refused unless it is the same sweep
  (the same overrides as its multirun.yaml) being run again to continue it (sweep_policy.py says what each job
  then does).
- A guard fails closed: the overrides are compared as typed (an interpolation such as `${paths.output_dir}` is
  text here, never resolved), and anything the check cannot decide refuses the run in one line (exit 2). Hydra's
  callback runner turns an exception into a warning and goes on, so nothing may escape these callbacks but an exit.
"""

import contextlib
import copy
import os
import sys
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from makemore_lab import commands, config_schema
from makemore_lab.commands import command, resume_command
from makemore_lab.errors import UserError
from makemore_lab.ranks import is_rank_zero


class RunDirRefused(UserError):
    """The run dir belongs to another run: nothing may be written into it (not even a sweep's failure.json)."""


class OutputDirCheck(Callback):
    """Hydra callback (configs/hydra/default.yaml), before Hydra writes anything: the run dir is created (a
    read-only or missing mount is one line, exit 2, where Hydra would give a traceback) and claimed for this run;
    a sweep dir is created and checked to belong to this sweep. Each check refuses what it cannot decide."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not is_rank_zero():  # an extra DDP rank (Lightning's, torchrun's, SLURM's) runs the command in rank 0's dir
            return
        with fail_closed("the run dir (hydra.run.dir)"):
            run_dir = str(config.hydra.run.dir)
            job = job_config(config, run_dir)
            try:  # a bad setting is refused before the run dir is made or written (Hydra's .hydra/, train.log)
                config_schema.validate(job, config_schema.TRAIN_RULES)
            except UserError as err:
                exit_with(err)
            make_dir_or_exit(run_dir, "run dir (hydra.run.dir)")
            resuming = bool(job.get("ckpt_path"))
            try:
                if resuming:  # reads only: refused here, the run dir (its lock file too) is left as it was
                    check_resume(job)
                claim(Path(run_dir), resuming=resuming, task_overrides=typed_overrides(config))
            except UserError as err:
                release(Path(run_dir))
                exit_with(err)
            except OSError as err:  # an existing dir that cannot be written (read-only mount, no permission)
                release(Path(run_dir))
                exit_with(UserError(f"cannot write into the run dir (hydra.run.dir) {run_dir}: {err.strerror}"))

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        release(Path(str(config.hydra.run.dir)))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not is_rank_zero():
            return
        with fail_closed("the sweep dir (hydra.sweep.dir)"):
            sweep_dir = str(config.hydra.sweep.dir)
            make_dir_or_exit(sweep_dir, "sweep dir (hydra.sweep.dir)")
            try:
                check_sweep_dir(Path(sweep_dir), typed_overrides(config))
            except UserError as err:
                exit_with(err)
            commands.multirun_started(sweep_dir)  # a Ctrl-C between jobs names it (cli.exit_on_early_interrupt)


@contextlib.contextmanager
def fail_closed(what: str):
    """A check that cannot decide refuses: any exception in it becomes one line and exit 2 (Hydra's callback runner
    would only warn and let the run write into a dir nobody checked)."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - whatever stops the check, the run does not go on unchecked
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        exit_with(
            UserError(
                f"cannot check {what}, so the run is refused: {type(err).__name__}" + (f": {detail}" if detail else "")
            )
        )


def typed_overrides(config: DictConfig) -> list[str]:
    """The task overrides as typed: an interpolation in one (`+note=${paths.output_dir}`) is text, not resolved."""
    return [str(o) for o in OmegaConf.to_container(config.hydra.overrides.task, resolve=False)]


def job_config(config: DictConfig, run_dir: str) -> DictConfig:
    """The config as the job will see it: Hydra sets the job's output dir (which `${paths.output_dir}` reads) after
    this callback, so a copy gets it now, and ${hydra:...} reads that copy until Hydra's run_job sets its own."""
    job = copy.deepcopy(config)
    with open_dict(job):
        job.hydra.runtime.output_dir = os.path.abspath(run_dir)
    HydraConfig.instance().set_config(job)
    return job


def check_resume(job: DictConfig) -> None:
    """A resume that its checkpoint and this config alone refuse (another model or optimizer, nothing left to
    train, a checkpoint that is not a resumable one, a bad setting) is refused here, before Hydra writes the run
    dir's `.hydra/` and `train.log`: a finished run keeps its own. What needs the built data and model (the
    vocabulary, block size and the weights' shapes) is checked by the run, which builds them."""
    from makemore_lab.checkpoint import check_resumable, data_fingerprint, read_checkpoint  # torch: a resume only

    checkpoint = read_checkpoint(job.ckpt_path)
    expected = {"model": OmegaConf.to_container(job.model, resolve=True), "optimizer": job.optimizer._target_}
    if str(job.data._target_).startswith("makemore_lab.data."):  # the package's data module: its file's fingerprint
        expected["data_fingerprint"] = data_fingerprint(job.data.get("path"), job.data.get("max_bytes"))
    check_resumable(checkpoint, job.ckpt_path, expected, job.trainer.max_steps)


def exit_with(err: UserError) -> None:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(err.exit_code)


def make_dir_or_exit(path: str, what: str) -> None:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"error: cannot create the {what} {path}: {err.strerror}", file=sys.stderr)
        sys.exit(2)


def check_sweep_dir(sweep_dir: Path, task_overrides: list[str]) -> None:
    """A sweep dir holds one sweep: empty, or this same sweep's (its multirun.yaml has the same task overrides)."""
    if not any(sweep_dir.iterdir()):
        return
    recorded = sweep_dir / "multirun.yaml"
    if not recorded.is_file():
        raise RunDirRefused(
            f"sweep dir {sweep_dir} is not empty and holds no sweep (no multirun.yaml): choose another hydra.sweep.dir"
        )
    theirs = typed_overrides(OmegaConf.load(recorded))
    if theirs != [str(o) for o in task_overrides]:
        raise RunDirRefused(
            f"sweep dir {sweep_dir} holds another sweep ({command('train', theirs, multirun=True)}): its "
            "table would mix the two; choose another hydra.sweep.dir, or rerun that sweep to continue it"
        )


_held: dict[Path, "RunDirLock"] = {}  # run dirs this process has claimed (by the Hydra callback), by resolved path


def claim(run_dir: Path, resuming: bool, task_overrides: list[str] | None = None) -> None:
    """Claim `run_dir` for this process until it ends (or release()); a UserError if it belongs to another run."""
    key = run_dir.resolve()
    if key not in _held:
        _held[key] = RunDirLock(run_dir, resuming, task_overrides).__enter__()


def release(run_dir: Path) -> None:
    lock = _held.pop(run_dir.resolve(), None)
    if lock is not None:
        lock.__exit__()


class RunDirLock:
    """The run dir's lock and checks, held for a `with` block (train()); a no-op where this process claimed it."""

    def __init__(self, out_dir: Path, resuming: bool, task_overrides: list[str] | None = None):
        self.out_dir, self.resuming, self.task_overrides = Path(out_dir), resuming, task_overrides
        self._lock: FileLock | None = None

    def __enter__(self) -> "RunDirLock":
        if not is_rank_zero():  # an extra DDP rank (Lightning's, torchrun's, SLURM's) runs the command in rank 0's dir
            return self
        if self.out_dir.resolve() in _held:  # claimed by this process before Hydra wrote into it
            return self
        self.out_dir.mkdir(parents=True, exist_ok=True)
        lock_path = self.out_dir / ".lock"
        self._lock = FileLock(lock_path, timeout=0)
        try:
            self._lock.acquire()
        except Timeout:
            self._lock = None
            holder = read_holder(lock_path) or "another process"
            raise RunDirRefused(
                f"run dir {self.out_dir} is in use by a running train.py (pid {holder}): "
                "wait for it, or choose another hydra.run.dir"
            ) from None
        try:
            self.check_not_taken()
            write_holder(lock_path)
        except (UserError, OSError):
            self.__exit__()
            raise
        return self

    def check_not_taken(self) -> None:
        """A new run (no ckpt_path) may not start over a finished or an interrupted run."""
        if self.resuming:
            return
        if (self.out_dir / "summary.json").exists():
            raise RunDirRefused(
                f"run dir {self.out_dir} holds a finished run (summary.json): choose another "
                "hydra.run.dir, delete it, or continue it with ckpt_path=<run dir>/checkpoints/last.ckpt"
            )
        if (self.out_dir / "checkpoints" / "last.ckpt").exists():
            raise RunDirRefused(
                f"run dir {self.out_dir} holds an interrupted run (checkpoints/last.ckpt, no "
                f"summary.json): continue it with: {resume_command(self.out_dir, self.task_overrides)} "
                "(or choose another hydra.run.dir)"
            )

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def write_holder(lock_path: Path) -> None:
    """This process's id in the lock file, for the line that refuses a second run (the lock is on the file, not
    its contents: rewriting them leaves it held)."""
    with open(lock_path, "r+") as f:
        f.truncate()
        f.write(str(os.getpid()))


def read_holder(lock_path: Path) -> str:
    try:
        return lock_path.read_text().strip()
    except OSError:
        return ""
