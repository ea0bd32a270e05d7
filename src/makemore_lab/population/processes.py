"""One group of jobs as several populations side by side, one process per CPU thread of its budget.

A population's step is a few large ops, which two torch threads speed up well, but much of what it does per member is
Python on one thread: the diagnostics' measurements, validations' and final reports' bookkeeping, matplotlib's
figures, the checkpoints. Measured on the 2-core machine (a 16-point lr sweep, 2 threads in all): one process of 16
members with 2 threads took 96-98 s for the MLP at 20,000 steps and 127 s for WaveNet at 5,000; two processes of 8
members with 1 thread each took 75-79 s and 100 s. So on a CPU the launcher cuts a group of N jobs into P parts of
at least MIN_MEMBERS members, P = the group's thread budget (`threads`, or the fair share under `threads: auto`)
capped by `hydra.launcher.processes`, and trains every part in a worker process of its own, each with budget // P
threads, while the launcher only waits for their answers. Every member still trains exactly as its solo run (a part
is a population like any other); its summary.json's population_size is its part's size. A GPU keeps one process
(one device, one process), and so does a group of one part: it trains in the launcher's own process.

The contract with the parent (the launcher, and `train_side_by_side` below):

- Each worker is the one process of a standard-library `concurrent.futures.ProcessPoolExecutor` (a pool per worker:
  a pool whose process dies is broken as a whole, and one dead worker must fail only its own part). Workers are
  forked from multiprocessing's fork server (spawned where the platform has none, or where it cannot start), which
  the launcher starts as soon as Hydra sets it up (`start_fork_server`): the server imports torch, Lightning and the
  engine (worker_imports.py) on another core while the launcher composes and prepares the jobs, and each worker is
  a fork of it with all of that imported. The fork server's Unix socket goes in a short temp dir (`short_temp_dir`),
  so that a long TMPDIR (macOS's /var/folders/..., a cluster job's scratch dir) cannot stop it. The launcher itself
  never imports torch for a group trained side by side: everything it does there (preparing job dirs, grouping,
  the sweep's records) is torch-free, so its start-up is Hydra's alone. Nothing in the fork server runs a torch
  operation or starts a thread, so a fork is as clean as a fresh interpreter.
- Signals are the parent's alone: workers ignore SIGINT and SIGTERM, and read one shared `StopFlag` that the
  parent's handlers set (a Ctrl-C at the terminal reaches every process of the group; a SIGTERM from a scheduler
  may reach only the parent). Every part then stops after its current chunk of steps and saves every member; the
  parent raises one TrainingInterrupted with the command that resumes the whole sweep. A second signal aborts at
  once: the workers are killed, and the last saved checkpoints are kept.
- A worker's outcomes come back pickled: summary dicts, or the exception that ended a member (one that does not
  pickle comes back as a RuntimeError with its type and message). A worker that dies (killed, out of memory) fails
  its part's members; the other parts go on.
"""

import concurrent.futures
import contextlib
import importlib.metadata
import logging
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.util
import os
import pickle
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool

from omegaconf import DictConfig, open_dict

from makemore_lab.errors import TrainingInterrupted, UserError

log = logging.getLogger(__name__)

MIN_MEMBERS = 4  # the smallest part: below it a worker's start (its imports) weighs more than what it saves
PRELOAD = "makemore_lab.population.worker_imports"  # what the fork server imports for every worker
SOCKET_PATH_ROOM = 60  # a Unix socket path has at most 104 (macOS) to 108 bytes; multiprocessing adds ~40 to its dir
_context = None  # the workers' multiprocessing context, chosen once per process (start_fork_server)


def short_temp_dir() -> None:
    """multiprocessing's temp dir for this process (where the fork server's socket goes) made under /tmp where the
    temp dir's path is too long for a socket path. multiprocessing creates that dir once, at its first use, under
    tempfile's temp dir: pointed at /tmp for that one call, every later socket path is short."""
    base = tempfile.gettempdir()
    if len(base) <= SOCKET_PATH_ROOM or not os.path.isdir("/tmp") or not os.access("/tmp", os.W_OK):
        return
    saved = tempfile.tempdir
    tempfile.tempdir = "/tmp"
    try:
        multiprocessing.util.get_temp_dir()  # kept by multiprocessing for this process's life
    finally:
        tempfile.tempdir = saved


def start_fork_server() -> multiprocessing.context.BaseContext:
    """The workers' context: the fork server's, started now, importing PRELOAD in the background; spawn where the
    platform has no fork server or where it does not start (then each worker imports torch itself)."""
    global _context
    if _context is not None:
        return _context
    _context = multiprocessing.get_context("spawn")
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return _context
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([PRELOAD])
    try:
        short_temp_dir()
        multiprocessing.forkserver.ensure_running()
    except OSError as err:
        log.warning(
            "the population's fork server did not start (%s): its workers are spawned instead, each "
            "importing torch and Lightning itself (several seconds of a core per worker before it trains)",
            err,
        )
        return _context
    _context = context
    return _context


def trains_on_cpu(accelerator) -> bool:
    """Whether a population with this `trainer.accelerator` trains on the CPU: unless it allows a GPU (auto, gpu,
    cuda) and CUDA is available (train.choose_device builds its device from this). Without importing torch where the
    answer is known without it: accelerator=cpu (or anything but auto, gpu and cuda), or a CPU-only torch build (its
    version ends in "+cpu", as this project pins it), which has no CUDA."""
    if str(accelerator) not in ("auto", "gpu", "cuda"):
        return True
    try:
        if importlib.metadata.version("torch").endswith("+cpu"):
            return True
    except importlib.metadata.PackageNotFoundError:
        pass
    import torch

    return not torch.cuda.is_available()


def process_count(setting, budget: int, members: int, on_cpu: bool) -> int:
    """How many processes a group of `members` jobs trains in: one per thread of `budget` (capped by `setting`,
    "auto" or a positive int), each part at least MIN_MEMBERS members; 1 on a GPU."""
    if setting != "auto" and (isinstance(setting, bool) or not isinstance(setting, int) or setting < 1):
        raise UserError(f"hydra.launcher.processes must be auto or a positive whole number, got {setting!r}")
    if not on_cpu:
        return 1
    cap = budget if setting == "auto" else min(setting, budget)
    return max(1, min(cap, members // MIN_MEMBERS))


def split(items: Sequence, parts: int) -> list[list]:
    """`items` cut into `parts` runs of consecutive items whose sizes differ by at most one."""
    size, extra = divmod(len(items), parts)
    bounds = [i * size + min(i, extra) for i in range(parts + 1)]
    return [list(items[bounds[i] : bounds[i + 1]]) for i in range(parts)]


def with_threads(cfg: DictConfig, threads: int) -> DictConfig:
    """A copy of a member's train config whose `threads` is its part's share of the group's budget."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.threads = threads
    return cfg


# SIGUSR2: what SLURM sends before a time limit or a preemption when asked to (submitit's jobs ask); not on Windows
SCHEDULER_SIGNAL = getattr(signal, "SIGUSR2", None)


class StopFlag:
    """Why training should stop: None, "Ctrl-C", "SIGTERM" or "SIGUSR2". Held in a shared int, so that the parts of
    a group trained side by side read the one flag their parent's handlers set (a lone population holds its own)."""

    NAMES = {
        signal.SIGINT: "Ctrl-C",
        signal.SIGTERM: "SIGTERM",
        **({SCHEDULER_SIGNAL: "SIGUSR2"} if SCHEDULER_SIGNAL else {}),
    }
    EXIT_CODES = {"SIGTERM": 143, "SIGUSR2": 140}

    def __init__(self, shared=None):
        self.shared = shared if shared is not None else multiprocessing.get_context("spawn").RawValue("i", 0)
        self.aborted = False  # a second signal came (in the process whose handlers set the flag)
        self.scheduler_handler = None  # what handled SIGUSR2 before (submitit's requeue), in the handlers' process

    @property
    def requested(self) -> str | None:
        return self.NAMES.get(self.shared.value)

    def request(self, signum: int) -> None:
        self.shared.value = signum

    @property
    def exit_code(self) -> int:
        return self.EXIT_CODES.get(self.requested, 130)

    def hand_over(self, where: str, resume: str) -> None:
        """After SIGUSR2, with every member saved: the scheduler's own handler (submitit requeues the job, whose next
        run resumes the members), as a run hands over (resume.hand_over_to_scheduler); nothing for other signals."""
        if self.requested == "SIGUSR2":
            from makemore_lab.resume import hand_over_to_scheduler  # imports Lightning: only here, after training

            hand_over_to_scheduler(self.scheduler_handler, where, resume)


@contextlib.contextmanager
def stopping_on_signals(stop: StopFlag):
    """Ctrl-C, SIGTERM or SIGUSR2: set `stop`, so that training stops after the current chunk of steps and saves every
    member; a second signal aborts at once. Only the main thread can install handlers; elsewhere this does nothing."""

    def request_stop(signum, frame):
        if stop.requested:
            stop.aborted = True
            raise TrainingInterrupted("aborted by a second signal; the last saved checkpoints are kept")
        stop.request(signum)
        if signum != SCHEDULER_SIGNAL:  # nothing written for the scheduler's: a handler that writes can re-enter
            print(
                f"\n{stop.requested}: stopping the population after the current steps and saving every member",
                file=sys.stderr,
                flush=True,
            )

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = [signal.SIGINT, signal.SIGTERM] + ([SCHEDULER_SIGNAL] if SCHEDULER_SIGNAL else [])
    previous = {signum: signal.signal(signum, request_stop) for signum in signals}
    stop.scheduler_handler = previous.get(SCHEDULER_SIGNAL)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class Interrupted:
    """A part's answer when the shared StopFlag stopped it (its members are saved)."""


def picklable(outcome):
    """An outcome that survives the trip to the parent: an exception that does not pickle becomes a RuntimeError."""
    try:
        pickle.dumps(outcome)
        return outcome
    except Exception:  # noqa: BLE001 - any failure to pickle
        return RuntimeError(f"{type(outcome).__name__}: {outcome}")


_stop: StopFlag | None = None  # a worker's view of its parent's flag (start_worker)


def start_worker(shared_stop, sweep_config: DictConfig) -> None:
    """A worker process's start (the pool's initializer): signals are its parent's (it ignores SIGINT and SIGTERM
    and reads the shared flag), its console lines go through Hydra's handlers as in the parent, and HydraConfig is
    the sweep's, as in the parent while its members train."""
    global _stop
    for signum in (signal.SIGINT, signal.SIGTERM, SCHEDULER_SIGNAL):
        if signum is not None:
            signal.signal(signum, signal.SIG_IGN)
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import configure_log

    configure_log(sweep_config.hydra.hydra_logging, sweep_config.hydra.verbose)
    HydraConfig.instance().set_config(sweep_config)
    _stop = StopFlag(shared_stop)


def train_part(part: list[DictConfig], env: dict):
    """In a worker: train one part as a population; its members' outcomes, or Interrupted."""
    from makemore_lab.population import train_population  # imported already where forked from the fork server

    try:
        with environment(env):
            return [picklable(outcome) for outcome in train_population(part, _stop)]
    except TrainingInterrupted:
        return Interrupted()
    except Exception as err:  # noqa: BLE001 - the part as a whole crashed: every member's outcome
        return [picklable(err)] * len(part)


@contextlib.contextmanager
def environment(env: dict):
    """The job's hydra.job.env_set in this process's environment while its part trains (as Hydra's env_override)."""
    previous = {name: os.environ.get(name) for name in env}
    os.environ.update({name: str(value) for name, value in env.items()})
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


WORKER_ENDED = (
    "the population's worker process ended before its members finished (killed, or out of memory: "
    "its members' last checkpoints are kept)"
)


class Workers:
    """`count` worker processes, each a one-process ProcessPoolExecutor started now (forked from the fork server:
    start_fork_server), sharing their `stop` flag with this process."""

    def __init__(self, count: int, sweep_config: DictConfig):
        context = start_fork_server()
        self.stop = stop = StopFlag()
        self.pools = [
            concurrent.futures.ProcessPoolExecutor(
                1, mp_context=context, initializer=start_worker, initargs=(stop.shared, sweep_config)
            )
            for _ in range(count)
        ]
        self.pids = [pool.submit(os.getpid) for pool in self.pools]  # a pool starts its process at its first task
        self.dead: set[int] = set()

    def __len__(self) -> int:
        return len(self.alive())

    def alive(self) -> list[int]:
        """The indices of the workers still running (one that died fails only the part it had)."""
        return [index for index in range(len(self.pools)) if index not in self.dead]

    def submit(self, index: int, part: list, env: dict) -> concurrent.futures.Future:
        try:
            return self.pools[index].submit(train_part, part, env)
        except (BrokenProcessPool, RuntimeError) as err:  # it died while idle: the answer reports it for its part
            failed = concurrent.futures.Future()
            failed.set_exception(BrokenProcessPool(str(err)))
            return failed

    def answer(self, index: int, future: concurrent.futures.Future, part: list):
        """Worker `index`'s outcomes for `part`; its members' failure if the worker died on the way."""
        try:
            return future.result()
        except BrokenProcessPool:
            self.dead.add(index)
            return [RuntimeError(WORKER_ENDED)] * len(part)

    def close(self) -> None:
        for pool in self.pools:
            pool.shutdown(wait=True, cancel_futures=True)
        self.pools, self.pids = [], []

    def kill(self) -> None:
        """End every worker now (a second signal): their last saved checkpoints are kept."""
        for pid in self.pids:
            with contextlib.suppress(Exception):
                os.kill(pid.result(timeout=5), getattr(signal, "SIGKILL", signal.SIGTERM))
        for pool in self.pools:
            pool.shutdown(wait=False, cancel_futures=True)
        self.pools, self.pids = [], []


def train_side_by_side(
    parts: list[list[DictConfig]], workers: Workers, resume_command: Callable[[], str], env: dict
) -> list:
    """Train each part in a worker of its own, all at the same time; every member's outcome, in order. `env`: the
    jobs' hydra.job.env_set. The launcher cut no more parts than there are live workers.

    While they train, this process's handlers for Ctrl-C and SIGTERM set the shared StopFlag (every part stops after
    its current chunk and saves its members; then one TrainingInterrupted with `resume_command()`); a second signal
    kills the workers and aborts."""
    stop = workers.stop
    alive = workers.alive()
    outcomes, interrupted = [], False
    try:
        with stopping_on_signals(stop):
            futures = [workers.submit(index, part, env) for index, part in zip(alive, parts)]
            for position, part in enumerate(parts):
                if position >= len(alive):  # a worker died since the parts were cut: nobody trains this part
                    outcomes += [RuntimeError("no worker process was left to train this member's part")] * len(part)
                    continue
                answer = workers.answer(alive[position], futures[position], part)
                interrupted |= isinstance(answer, Interrupted)
                outcomes += [None] * len(part) if isinstance(answer, Interrupted) else answer
    except TrainingInterrupted:  # the second signal: stop now
        workers.kill()
        raise
    if interrupted or stop.requested:
        members = sum(len(part) for part in parts)
        where = f"{members} members in {len(parts)} processes stopped; every member's checkpoint saved"
        stop.hand_over(where, resume_command())
        raise TrainingInterrupted(
            f"{stop.requested}: {where}. Resume with: {resume_command()}", exit_code=stop.exit_code
        )
    return outcomes
