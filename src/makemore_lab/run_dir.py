"""A run dir or sweep dir belongs to one run, from before Hydra writes anything into it.

- One run per run dir: a second train.py in the same `hydra.run.dir` is refused while the first runs (an flock on
  `<run dir>/.lock`: the kernel drops it when its process ends, however it ends, so a killed run never leaves it
  stuck); a finished run (summary.json) is not overwritten by a new one, and an interrupted one (last.ckpt, no
  summary.json) is not restarted from scratch: both are refused with what to do instead. Continuing a run with
  `ckpt_path=` is allowed.
- Hydra writes `<run dir>/.hydra/` before the task starts, so the claim is made earlier, by the Hydra callback
  OutputDirCheck (on_run_start runs before Hydra's run_job): a refused run leaves the dir exactly as it was.
  train() takes the same lock itself when called without Hydra (tests, scripts); in a process that already holds
  it (claimed by the callback) it is not taken twice.
- One sweep per sweep dir: a multirun into a non-empty `hydra.sweep.dir` is refused unless it is the same sweep
  (the same overrides as its multirun.yaml) being run again to continue it (sweep_policy.py says what each job
  then does).
"""

import fcntl
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from makemore_lab.commands import resume_command
from makemore_lab.errors import UserError


class RunDirRefused(UserError):
    """The run dir belongs to another run: nothing may be written into it (not even a sweep's failure.json)."""


class OutputDirCheck(Callback):
    """Hydra callback (configs/hydra/default.yaml), before Hydra writes anything: the run dir is created (a
    read-only or missing mount is one line, exit 2, where Hydra would give a traceback) and claimed for this run;
    a sweep dir is created and checked to belong to this sweep."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if os.environ.get("LOCAL_RANK", "0") != "0":  # an extra DDP rank re-runs the command in its rank 0's dir
            return
        run_dir = str(config.hydra.run.dir)
        make_dir_or_exit(run_dir, "run dir (hydra.run.dir)")
        try:
            claim(Path(run_dir), resuming=bool(config.get("ckpt_path")), task_overrides=list(config.hydra.overrides.task))
        except UserError as err:
            exit_with(err)
        except OSError as err:  # an existing dir that cannot be written (read-only mount, no permission)
            exit_with(UserError(f"cannot write into the run dir (hydra.run.dir) {run_dir}: {err.strerror}"))

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        release(Path(str(config.hydra.run.dir)))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if os.environ.get("LOCAL_RANK", "0") != "0":
            return
        sweep_dir = str(config.hydra.sweep.dir)
        make_dir_or_exit(sweep_dir, "sweep dir (hydra.sweep.dir)")
        try:
            check_sweep_dir(Path(sweep_dir), list(config.hydra.overrides.task))
        except UserError as err:
            exit_with(err)


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
        raise RunDirRefused(f"sweep dir {sweep_dir} is not empty and holds no sweep (no multirun.yaml): choose "
                            "another hydra.sweep.dir")
    theirs = [str(o) for o in OmegaConf.load(recorded).hydra.overrides.task]
    if theirs != [str(o) for o in task_overrides]:
        raise RunDirRefused(f"sweep dir {sweep_dir} holds another sweep (python train.py -m {' '.join(theirs)}): its "
                            "table would mix the two; choose another hydra.sweep.dir, or rerun that sweep to continue it")


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
        self._file = None

    def __enter__(self) -> "RunDirLock":
        if os.environ.get("LOCAL_RANK", "0") != "0":  # an extra DDP rank re-runs the command in its rank 0's dir
            return self
        if self.out_dir.resolve() in _held:  # claimed by this process before Hydra wrote into it
            return self
        self.out_dir.mkdir(parents=True, exist_ok=True)
        lock_path = self.out_dir / ".lock"
        self._file = open(lock_path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise RunDirRefused(f"run dir {self.out_dir} is in use by a running train.py (pid {holder}): "
                                "wait for it, or choose another hydra.run.dir") from None
        try:
            self.check_not_taken()
        except UserError:
            self.__exit__()
            raise
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()
        return self

    def check_not_taken(self) -> None:
        """A new run (no ckpt_path) may not start over a finished or an interrupted run."""
        if self.resuming:
            return
        if (self.out_dir / "summary.json").exists():
            raise RunDirRefused(f"run dir {self.out_dir} holds a finished run (summary.json): choose another "
                                "hydra.run.dir, delete it, or continue it with ckpt_path=<run dir>/checkpoints/last.ckpt")
        if (self.out_dir / "checkpoints" / "last.ckpt").exists():
            raise RunDirRefused(f"run dir {self.out_dir} holds an interrupted run (checkpoints/last.ckpt, no "
                                f"summary.json): continue it with: {resume_command(self.out_dir, self.task_overrides)} "
                                "(or choose another hydra.run.dir)")

    def __exit__(self, *exc) -> None:
        if self._file is not None and not self._file.closed:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
