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

- Workers are forked from multiprocessing's fork server (spawned where the platform has no fork server), which the
  launcher starts as soon as Hydra sets it up (`start_fork_server`): the server imports torch, Lightning and the
  engine (worker_imports.py) on another core while the launcher composes and prepares the jobs, and each worker is
  a fork of it with all of that imported. The launcher itself never imports torch for a group trained side by side:
  everything it does there (preparing job dirs, grouping, the sweep's records) is torch-free, so its start-up is
  Hydra's alone. Nothing in the fork server runs a torch operation or starts a thread, so a fork is as clean as a
  fresh interpreter. A worker serves parts until told to stop or until its parent's end closes the pipe.
- Signals are the parent's alone: workers ignore SIGINT and SIGTERM, and read one shared `StopFlag` that the
  parent's handlers set (a Ctrl-C at the terminal reaches every process of the group; a SIGTERM from a scheduler
  may reach only the parent). Every part then stops after its current chunk of steps and saves every member; the
  parent raises one TrainingInterrupted with the command that resumes the whole sweep. A second signal aborts at
  once: the workers are killed, and the last saved checkpoints are kept.
- A worker's outcomes come back pickled: summary dicts, or the exception that ended a member (one that does not
  pickle comes back as a RuntimeError with its type and message). A worker that dies (killed, out of memory) fails
  its part's members, with its exit code; the other parts go on.
"""

import contextlib
import importlib.metadata
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from omegaconf import DictConfig, open_dict

from makemore_lab.errors import TrainingInterrupted, UserError

log = logging.getLogger(__name__)

MIN_MEMBERS = 4  # the smallest part: below it a worker's start (its imports) weighs more than what it saves
PRELOAD = "makemore_lab.population.worker_imports"  # what the fork server imports for every worker


def start_method() -> str:
    """How workers start: forked from the fork server where the platform has one (Linux, macOS), else spawned."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def start_fork_server() -> None:
    """Start the fork server now, importing PRELOAD in the background; a no-op where it runs or cannot run."""
    if start_method() == "forkserver":
        multiprocessing.get_context("forkserver").set_forkserver_preload([PRELOAD])
        multiprocessing.forkserver.ensure_running()


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


class StopFlag:
    """Why training should stop: None, "Ctrl-C" or "SIGTERM". Held in a shared int, so that the parts of a group
    trained side by side read the one flag their parent's handlers set (a lone population holds its own)."""

    NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}

    def __init__(self, shared=None):
        self.shared = shared if shared is not None else multiprocessing.get_context("spawn").RawValue("i", 0)
        self.aborted = False  # a second signal came (in the process whose handlers set the flag)

    @property
    def requested(self) -> str | None:
        return self.NAMES.get(self.shared.value)

    def request(self, signum: int) -> None:
        self.shared.value = signum

    @property
    def exit_code(self) -> int:
        return 143 if self.shared.value == signal.SIGTERM else 130


@contextlib.contextmanager
def stopping_on_signals(stop: StopFlag):
    """Ctrl-C or SIGTERM: set `stop`, so that training stops after the current chunk of steps and saves every member;
    a second signal aborts at once. Only the main thread can install handlers; elsewhere this does nothing."""

    def request_stop(signum, frame):
        if stop.requested:
            stop.aborted = True
            raise TrainingInterrupted("aborted by a second signal; the last saved checkpoints are kept")
        stop.request(signum)
        print(f"\n{stop.requested}: stopping the population after the current steps and saving every member",
              file=sys.stderr, flush=True)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)}
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


def serve(conn, shared_stop, logging_config, verbose) -> None:
    """A worker process: train the parts its parent sends, one at a time, and send each part's outcomes back."""
    busy = False

    def on_sigterm(signum, frame):
        if not busy:  # waiting for a part: nothing to save
            raise SystemExit(0)

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # while training, the parent decides, through the shared flag
    signal.signal(signal.SIGTERM, on_sigterm)
    from hydra.core.utils import configure_log

    configure_log(logging_config, verbose)  # the console lines as in the parent (Hydra's hydra_logging)
    from makemore_lab.population import train_population  # imported already where forked from the fork server

    stop = StopFlag(shared_stop)
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the parent is gone
            return
        if task is None:
            return
        part, env = task
        busy = True
        try:
            with environment(env):
                outcomes = [picklable(outcome) for outcome in train_population(part, stop)]
        except TrainingInterrupted:
            outcomes = Interrupted()
        except Exception as err:  # noqa: BLE001 - the part as a whole crashed: every member's outcome
            outcomes = [picklable(err)] * len(part)
        busy = False
        conn.send(outcomes)


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


class Workers:
    """`count` worker processes, started now (forked from the fork server: start_fork_server), sharing their
    `stop` flag with this process."""

    def __init__(self, count: int, logging_config, verbose):
        start_fork_server()
        context = multiprocessing.get_context(start_method())
        self.stop = stop = StopFlag()
        self.processes, self.conns = [], []
        for _ in range(count):
            parent_end, child_end = context.Pipe()
            process = context.Process(target=serve, args=(child_end, stop.shared, logging_config, verbose),
                                      daemon=True, name="population-worker")
            process.start()
            child_end.close()
            self.processes.append(process)
            self.conns.append(parent_end)

    def __len__(self) -> int:
        return len(self.alive())

    def alive(self) -> list[int]:
        """The indices of the workers still running (one that died fails only the part it had)."""
        return [index for index, process in enumerate(self.processes) if process.is_alive()]

    def send(self, index: int, task) -> None:
        try:
            self.conns[index].send(task)
        except OSError:  # it died just now: receive() reports it for its part
            pass

    def close(self) -> None:
        for conn, process in zip(self.conns, self.processes):
            try:
                conn.send(None)
            except OSError:  # already gone
                pass
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
        self.processes, self.conns = [], []

    def kill(self) -> None:
        for process in self.processes:
            process.kill()
        self.processes, self.conns = [], []

    def receive(self, index: int, part: list):
        """Worker `index`'s outcomes for `part`; its members' failure if the worker died on the way."""
        try:
            return self.conns[index].recv()
        except (EOFError, OSError):
            process = self.processes[index]
            process.join(timeout=10)
            error = RuntimeError(f"the population's worker process ended (exit code {process.exitcode}) "
                                 "before its members finished")
            return [error] * len(part)


def train_side_by_side(parts: list[list[DictConfig]], workers: Workers, resume_command: Callable[[], str],
                       env: dict) -> list:
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
            for index, part in zip(alive, parts):
                workers.send(index, (part, env))
            for position, part in enumerate(parts):
                if position >= len(alive):  # a worker died since the parts were cut: nobody trains this part
                    outcomes += [RuntimeError("no worker process was left to train this member's part")] * len(part)
                    continue
                answer = workers.receive(alive[position], part)
                interrupted |= isinstance(answer, Interrupted)
                outcomes += [None] * len(part) if isinstance(answer, Interrupted) else answer
    except TrainingInterrupted:  # the second signal: stop now
        workers.kill()
        raise
    if interrupted or stop.requested:
        members = sum(len(part) for part in parts)
        raise TrainingInterrupted(
            f"{stop.requested}: {members} members in {len(parts)} processes stopped; every member's checkpoint "
            f"saved. Resume with: {resume_command()}", exit_code=stop.exit_code)
    return outcomes
