"""How many CPU threads torch uses, chosen so that runs sharing a machine do not oversubscribe it.

torch starts as many threads as there are cores, and its threads spin while they wait: two runs of a lecture-sized
model on a 2-core machine, each with 2 threads, ran at 0.02x of one run alone. With `threads: auto` (the default)
each run registers itself in a directory under the system temp dir (a file it holds locked while it lives),
counts the live runs there (the files still locked), and uses cores // live runs threads (at least 1); it counts again every few seconds of training
(callbacks/thread_budget.py), so a run alone gets every core and speeds up again when the others finish.
`threads=N` or an `OMP_NUM_THREADS` in the environment is the user's choice and is left alone. A joblib sweep of
n jobs gives each cores // n threads the same way, since each job registers.

Nothing here imports torch until `choose` sets its thread count: the population launcher counts a sweep's budget
in a process that never imports torch (hydra_plugins/makemore_population_launcher).
"""

import atexit
import logging
import os
import tempfile
from pathlib import Path

from filelock import FileLock, Timeout

from makemore_lab import console

log = logging.getLogger(__name__)

REGISTRY = Path(tempfile.gettempdir()) / "makemore-lab-runs"
RECOUNT_SECONDS = 3.0


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def alive(entry: Path) -> bool:
    """A run's entry is locked for as long as its process lives: the OS drops the lock when the process ends, however
    it ends (portable: filelock uses flock on POSIX and msvcrt on Windows; no signal is sent to anyone)."""
    lock = FileLock(entry, is_singleton=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def live_runs() -> int:
    """The runs registered here whose process still lives (this one included); stale entries are removed."""
    count = 0
    for entry in REGISTRY.glob("*"):
        if entry.suffix == ".lock" and alive(entry):
            count += 1
        else:
            entry.unlink(missing_ok=True)
    return max(count, 1)


_registered: FileLock | None = None  # this process's entry, held until it exits


def register() -> None:
    global _registered
    entry = REGISTRY / f"{os.getpid()}.lock"
    if _registered is not None and Path(_registered.lock_file) == entry:
        return
    REGISTRY.mkdir(parents=True, exist_ok=True)
    lock = FileLock(entry, is_singleton=False)
    lock.acquire()
    _registered = lock

    def unregister(lock=lock, path=Path(lock.lock_file)) -> None:
        lock.release()
        path.unlink(missing_ok=True)

    atexit.register(unregister)


def fair_share(runs: int | None = None) -> int:
    """cores // runs (at least 1); `runs` counted now if not given."""
    return max(1, cores() // (runs or live_runs()))


def budget(setting) -> int:
    """The threads a run with this `threads` setting would use now: N, OMP_NUM_THREADS, or the fair share (auto)."""
    if setting != "auto":
        return int(setting)
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return fair_share()


def choose(setting) -> bool:
    """Set torch's thread count for this run; returns whether the framework chose it (and should keep choosing)."""
    import torch

    if setting != "auto":
        torch.set_num_threads(int(setting))
        return False
    if os.environ.get("OMP_NUM_THREADS"):
        return False  # torch already follows it
    register()
    runs = live_runs()
    torch.set_num_threads(fair_share(runs))
    log.info(
        "threads: %d (%d cores, %d run(s) on this machine; set threads=N to choose)",
        torch.get_num_threads(),
        cores(),
        runs,
        extra=console.job_detail(),
    )
    return True
