"""One run per run dir: a second train.py in the same `hydra.run.dir` is refused while the first runs, and a
finished run is not overwritten by a new one (resuming it with ckpt_path= is continuing, not overwriting).

The lock is an flock on `<run dir>/.lock`: the kernel drops it when its process ends, however it ends, so a
killed run never leaves it stuck.
"""

import fcntl
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from makemore_lab.errors import UserError


class OutputDirCheck(Callback):
    """Hydra callback: a run or sweep dir that cannot be created (read-only, a missing mount) is one line and exit 2
    before anything runs — Hydra itself would make it with a traceback. Registered in configs/hydra/default.yaml."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        make_dir_or_exit(config.hydra.run.dir, "run dir (hydra.run.dir)")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        make_dir_or_exit(config.hydra.sweep.dir, "sweep dir (hydra.sweep.dir)")


def make_dir_or_exit(path: str, what: str) -> None:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"error: cannot create the {what} {path}: {err.strerror}", file=sys.stderr)
        sys.exit(2)


class RunDirLock:
    def __init__(self, out_dir: Path, resuming: bool):
        self.out_dir, self.resuming = Path(out_dir), resuming
        self._file = None

    def __enter__(self) -> "RunDirLock":
        if os.environ.get("LOCAL_RANK", "0") != "0":  # an extra DDP rank re-runs the command in its rank 0's dir
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
            raise UserError(f"run dir {self.out_dir} is in use by a running train.py (pid {holder}): "
                            "wait for it, or choose another hydra.run.dir") from None
        if (self.out_dir / "summary.json").exists() and not self.resuming:
            self.__exit__()
            raise UserError(f"run dir {self.out_dir} holds a finished run (summary.json): choose another "
                            "hydra.run.dir, delete it, or continue it with ckpt_path=<run dir>/checkpoints/last.ckpt")
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None and not self._file.closed:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
