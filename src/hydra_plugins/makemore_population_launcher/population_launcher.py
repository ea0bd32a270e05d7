"""`hydra/launcher=population`: a sweep's jobs that differ only in shape-preserving values train as one population.

The launcher prepares every job of the batch it is given (a grid sweep's jobs, or the `n_jobs` trials an Optuna
sweeper asks for at once) through Hydra's own run_job: its job dir, its `.hydra/` files, its train config resolved
while HydraConfig is that job's. makemore_lab.population.grouping then groups the jobs and the groups run one
after another: a group of two or more through the engine's `train_population`, a group of one exactly as the basic
launcher runs a job (run_job with train.py's task function). The same sweep run again into its own dir continues
it as under the basic launcher (sweep_policy.py): a finished or failed job is kept, not grouped; an interrupted one
resumes from its last.ckpt in its population. Every job gets its JobReturn, its failure.json when it
fails (sweep_policy.run_job, as for a solo job) and its row in the sweep summary. Where the engine
(makemore_lab.population.train_population) is not installed, every job runs alone.

With `submitit` set (hydra/launcher=population_slurm), each group is one SLURM job instead, submitted through
submitit: the job runs the group exactly as this process would (keeping what an earlier run finished, resuming what
it left interrupted), so a requeued job (a time limit, a preemption, `scontrol requeue`) resumes its members.

Nothing here imports torch or the engine at import time: Hydra imports every hydra_plugins module at start-up.
"""

import atexit
import copy
import dataclasses
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import (
    JobReturn,
    configure_log,
    env_override,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from makemore_lab.errors import TrainingInterrupted, exit_on_user_error

log = logging.getLogger(__name__)


class NoJobCallbacks:
    """Hydra's callbacks while run_job only prepares a job: the real on_job_start / on_job_end fire around the
    job's training, not around its preparation."""

    def on_job_start(self, **kwargs: Any) -> None:
        pass

    def on_job_end(self, **kwargs: Any) -> None:
        pass


def resolved_train_config(task_cfg: DictConfig) -> DictConfig | Exception:
    """The preparing run_job's task: the job's train config with every interpolation resolved now, while
    HydraConfig is this job's. A population trains many jobs under one HydraConfig, so `paths.output_dir`
    (`${hydra:runtime.output_dir}`) and everything built on it cannot wait until training reads them.
    A config that does not resolve gives its error back: that job runs alone and fails there as it would anyway."""
    cfg = copy.deepcopy(task_cfg)
    try:
        OmegaConf.resolve(cfg)
    except Exception as err:  # a custom resolver may raise anything
        return err
    return cfg


@dataclasses.dataclass
class Job:
    num: int
    sweep_config: DictConfig  # the job's whole config, hydra node included (hydra.runtime.output_dir set)
    prepared: JobReturn  # run_job's: cfg, hydra_cfg, overrides, working_dir; the result is filled in later
    kept: float | None = None  # its result from an earlier run of this sweep (sweep_policy): not trained again

    @property
    def resolves(self) -> bool:
        return not isinstance(self.prepared.return_value, Exception)

    @property
    def train_config(self) -> DictConfig:
        return self.prepared.return_value if self.resolves else OmegaConf.create()

    @property
    def env_set(self) -> dict:
        return OmegaConf.to_container(self.prepared.hydra_cfg.hydra.job.env_set, resolve=True)


def population_engine() -> ModuleType | None:
    """makemore_lab.population, or None where the engine is absent. Its population_refusal is torch-free; its
    train_population imports torch at first use (a group trained in this process, not side by side)."""
    if population_engine_spec() is None:
        return None
    from makemore_lab import population

    return population


def population_engine_spec():
    """Whether the engine is installed, without importing it (it imports torch)."""
    try:
        return importlib.util.find_spec("makemore_lab.population")
    except ImportError:
        return None


def replay(outcome: dict | BaseException):
    """A stand-in for train(cfg) that gives a member's outcome back, so that sweep_policy.run_job turns it into the
    job's result exactly as it does a solo job's: the val loss, or failure.json and +inf."""

    def member_train(cfg: DictConfig) -> dict:
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return member_train


@exit_on_user_error  # Ctrl-C / SIGTERM end the sweep with one line and exit 130, as they end a solo job
def train_members(train_population, cfgs: list[DictConfig]) -> list[dict | BaseException]:
    """The engine's outcomes, one per member; a crash of the population as a whole is every member's outcome."""
    try:
        return train_population(cfgs)
    except TrainingInterrupted:
        raise
    except Exception as err:
        log.error("the population of %d failed as a whole: %s: %s", len(cfgs), type(err).__name__, err)
        return [err] * len(cfgs)


class ComposedOnce:
    """The sweep's config loader, composing each job's config once. Hydra's sweepers compose every job's config to
    check it (`Sweeper.validate_batch_is_legal`: "this repeat[s] work the launcher will do", for a launcher in
    another process) just before the launcher composes it again to run it; in this launcher's one process the
    second compose (~0.25 s a job: 4 s of a 16-job sweep) would give the same config. A composed config is kept
    for the next call with the same master config and overrides, which takes it; everything else is the wrapped
    loader's."""

    def __init__(self, loader):
        self.loader = loader
        self.composed: dict[tuple[str, ...], tuple[DictConfig, DictConfig]] = {}  # overrides: (master, config)

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        key = tuple(sweep_overrides)
        kept = self.composed.pop(key, None)
        if kept is not None and kept[0] is master_config:
            return kept[1]
        composed = self.loader.load_sweep_config(master_config, list(sweep_overrides))
        self.composed[key] = (master_config, copy.deepcopy(composed))  # the caller may change its own copy
        return composed

    def __getattr__(self, name: str):
        if name == "loader":  # not set yet: unpickling (a SLURM job's copy, GroupJob) looks before __dict__ is filled
            raise AttributeError(name)
        return getattr(self.loader, name)


@exit_on_user_error  # a bad setting of the whole sweep: one line before any job, not every job a failed row
def check_population_settings(config: DictConfig) -> None:
    from makemore_lab import config_schema  # torch-free

    config_schema.validate(config, config_schema.POPULATION_RULES)


def resumes_a_member(job: Job) -> bool:
    """Whether this job resumes from a population member's checkpoint, as a job whose peers stopped early does: it
    then trains as a population of one, which carries on the member's own best checkpoint and early-stopping counts
    (a run's ModelCheckpoint and EarlyStopping would start theirs afresh). Reads the checkpoint, so
    only for a job about to train in this process (a job alone imports torch anyway)."""
    ckpt_path = job.train_config.get("ckpt_path") if job.resolves else None
    if not ckpt_path or not Path(ckpt_path).is_file():
        return False
    from makemore_lab.checkpoint import read_checkpoint
    from makemore_lab.errors import UserError

    try:
        checkpoint = read_checkpoint(ckpt_path)
    except UserError:  # not one of ours: the job alone says so, in its own words
        return False
    return "population_member" in checkpoint


def why(err: Exception) -> str:
    """One line for a submitit job without a result: its state (UncompletedJobError), or the exception that ended it
    (FailedJobError's message holds the job's trace between two dashed lines, then where its logs are)."""
    lines = [line.strip() for line in str(err).splitlines()]
    rules = [i for i, line in enumerate(lines) if line and set(line) == {"-"}]
    trace = [line for line in lines[rules[0] + 1 : rules[1]] if line] if len(rules) >= 2 else []
    state = [line for line in lines if "state:" in line]  # UncompletedJobError: "... (state: CANCELLED by 0)"
    return trace[-1] if trace else state[0] if state else next((line for line in lines if line), type(err).__name__)


@exit_on_user_error  # the sweep ends with this one line (exit 130), as after a Ctrl-C
def raise_unfinished(unfinished: list[str]) -> None:
    from makemore_lab.commands import sweep_resume_command  # torch-free

    raise TrainingInterrupted(
        "SLURM job(s) ended without a result: " + "; ".join(unfinished) + ". Their members' "
        f"last checkpoints are kept; continue the sweep with: {sweep_resume_command()}"
    )


class GroupJob:
    """What a SLURM job runs: one group of the sweep's jobs, as the launcher's own process would run it
    (PopulationLauncher.finish), with Hydra's global state as the launcher had it. Requeued (a time limit or a
    preemption: submitit calls `checkpoint`), it runs again, and finish() then keeps the members that had finished and
    resumes the interrupted ones from their last.ckpt."""

    def __init__(self, launcher: "PopulationLauncher", jobs: list[Job], singleton_state: dict) -> None:
        self.launcher, self.jobs, self.singleton_state = launcher, jobs, singleton_state

    def __call__(self) -> dict[int, JobReturn]:
        from makemore_lab import sweep_policy

        Singleton.set_state(self.singleton_state)
        setup_globals()
        configure_log(self.launcher.config.hydra.hydra_logging, self.launcher.config.hydra.verbose)
        for job in self.jobs:  # what an earlier run of this SLURM job (before a requeue) finished or left
            job.kept = sweep_policy.earlier_outcome(job.train_config, job.num, job.prepared.overrides)
        return self.launcher.finish(self.jobs, self.launcher.train)

    def checkpoint(self, *args, **kwargs):
        """submitit's requeue protocol: the same group again (its members resume from their checkpoints)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


class PopulationLauncher(Launcher):
    def __init__(self, processes: int | str = "auto", submitit: DictConfig | None = None) -> None:
        """`processes`: at most this many processes per group on a CPU ("auto": one per thread of the group's
        budget); makemore_lab/population/processes.py. `submitit`: None to train here, or the parameters of
        submitit's executor (configs/hydra/launcher/population_slurm.yaml) to train each group as a SLURM job."""
        super().__init__()
        self.processes = processes
        self.submitit = OmegaConf.to_container(submitit, resolve=True) if submitit else None
        self.workers = None  # processes.Workers, started at the first launch that may need them
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        if not isinstance(hydra_context.config_loader, ComposedOnce):
            # the sweeper holds this same context: its check of each batch composes the configs prepare() reuses
            hydra_context.config_loader = ComposedOnce(hydra_context.config_loader)
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function
        check_population_settings(config)  # before Hydra writes multirun.yaml
        if population_engine_spec() is None or self.submitit:  # groups trained in SLURM jobs start their own
            return
        from makemore_lab.population import processes  # torch-free: see the module docstring

        if self.sweep_processes(2 * processes.MIN_MEMBERS) >= 2:  # a group of this sweep may train side by side
            try:
                processes.start_fork_server()  # its imports for the workers run while the sweeper composes the jobs
            except OSError as err:  # start_workers tries again, and the groups train here if it cannot
                log.warning("the population's fork server did not start (%s)", err)

    def __getstate__(self) -> dict:
        """What a SLURM job receives (GroupJob pickles the launcher): no worker processes, which are this process's."""
        return {**self.__dict__, "workers": None}

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs as populations")
        jobs = [self.prepare(initial_job_idx + index, overrides) for index, overrides in enumerate(job_overrides)]
        returns = self.finish(jobs, self.submit if self.submitit else self.train)
        return [returns[job.num] for job in jobs]

    def finish(self, jobs: list[Job], train) -> dict[int, JobReturn]:
        """Each job's result: kept from an earlier run of the sweep, or from `train` (self.train: in this process and
        its workers; self.submit: each group as a SLURM job, which runs finish(..., train) there: GroupJob)."""
        returns = {job.num: self.keep(job) for job in jobs if job.kept is not None}
        to_train = [job for job in jobs if job.kept is None]
        if to_train:
            returns.update(train(to_train))
        return returns

    def groups(self, jobs: list[Job]) -> list[list[Job]]:
        """The jobs grouped (population/grouping.py), each job that cannot join a population in a group of its own;
        the grouping is logged, with why each job that could not join did not."""
        from makemore_lab.population.grouping import group_jobs  # here, not at import: see the module docstring

        engine = population_engine()
        refusals = [self.refusal(job, jobs[0], engine) for job in jobs]
        grouping = group_jobs([job.train_config for job in jobs], refusals, names=[job.num for job in jobs])
        for line in grouping.describe():
            log.info(line)
        return [[jobs[index] for index in group] for group in grouping.groups]

    def submit(self, jobs: list[Job]) -> dict[int, JobReturn]:
        """Each group of the jobs to train as one SLURM job (submitit), all submitted at once; their results as
        each job sends them back. A group whose SLURM job ends without a result (cancelled, or requeued
        max_num_timeout times) keeps its members' last checkpoints: the sweep ends with one line saying so, and the
        same command continues it."""
        import submitit  # here, not at import: Hydra imports every plugin at start-up

        params = dict(self.submitit)
        executor = submitit.AutoExecutor(
            folder=params.pop("submitit_folder"),
            cluster=params.pop("cluster", "slurm"),
            slurm_max_num_timeout=params.pop("slurm_max_num_timeout", 10),
        )
        executor.update_parameters(**params)  # None is "not set", as submitit reads it
        submitted, returns = [], {}
        for members in self.groups(jobs):
            job = executor.submit(GroupJob(self, members, Singleton.get_state()))
            log.info("job(s) %s: %s job %s", ",".join(str(m.num) for m in members), executor.cluster, job.job_id)
            submitted.append((members, job))
        unfinished = []
        for members, job in submitted:
            try:
                returns.update(job.result())
            except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError) as err:
                unfinished.append(f"{job.job_id} (job(s) {','.join(str(m.num) for m in members)}): {why(err)}")
        if unfinished:
            raise_unfinished(unfinished)
        return returns

    def train(self, jobs: list[Job]) -> dict[int, JobReturn]:
        """Group the jobs and run the groups one after another, in this process and its workers."""
        self.start_workers(len(jobs))
        groups = self.groups(jobs)
        engine = population_engine()
        if engine is None:
            log.warning(
                "the population engine (makemore_lab.population.train_population) is not installed: "
                "every job runs alone, as under the basic launcher"
            )
        returns: dict[int, JobReturn] = {}
        for members in groups:
            if engine is None or (len(members) == 1 and not resumes_a_member(members[0])):
                returns.update((job.num, self.run_alone(job)) for job in members)
            else:
                returns.update(self.run_population(members, engine))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns

    def sweep_processes(self, jobs: int) -> int:
        """How many processes a group of `jobs` of this sweep would train in (processes.process_count), from the
        sweep's config: its thread budget, hydra.launcher.processes, whether populations train on the CPU; 1 where the
        engine is absent. Torch-free. A job's own `threads` or `trainer.accelerator` (parts(), later) can only send
        its group back to fewer processes."""
        if population_engine_spec() is None:
            return 1
        from makemore_lab import threads  # neither imports torch: see the module docstring
        from makemore_lab.population import processes

        on_cpu = processes.trains_on_cpu(self.config.get("trainer", {}).get("accelerator", "auto"))
        return processes.process_count(self.processes, threads.budget(self.config.get("threads", "auto")), jobs, on_cpu)

    def start_workers(self, jobs: int) -> None:
        """Start, forked from the fork server (setup), the worker processes that the batch's largest possible group
        could use: one per part. Kept for the launcher's later batches (an Optuna sweep launches one batch after
        another) and closed at exit. None where every group trains in one process: a GPU, a thread budget of 1,
        fewer than 2 x processes.MIN_MEMBERS jobs to train."""
        count = self.sweep_processes(jobs)
        if self.workers is not None or count < 2:
            return
        from makemore_lab.population import processes

        try:
            self.workers = processes.Workers(count, self.config)
        except (OSError, EOFError) as err:  # no process could be started: the groups train here, one process each
            log.warning("the population's worker processes did not start (%s): every group trains in this process", err)
            return
        atexit.register(self.workers.close)

    def parts(self, members: list[Job]) -> list[list[DictConfig]]:
        """The members' train configs cut into the parts that train side by side, one per worker (processes.py),
        each config with its part's threads; one part where the group trains in this process."""
        from makemore_lab import threads
        from makemore_lab.population import processes

        cfgs = [job.train_config for job in members]
        budget = threads.budget(cfgs[0].threads)
        on_cpu = processes.trains_on_cpu(cfgs[0].trainer.get("accelerator", "auto"))
        count = min(processes.process_count(self.processes, budget, len(cfgs), on_cpu), len(self.workers or []))
        if count < 2 or cfgs[0].get("pbt"):  # PBT ranks the whole population: its members train in one process
            return [cfgs]
        share = max(1, budget // count)
        parts = [[processes.with_threads(cfg, share) for cfg in part] for part in processes.split(cfgs, count)]
        log.info(
            "job(s) %s: %d populations side by side in %d processes (%s members), %d thread(s) each",
            ",".join(str(job.num) for job in members),
            count,
            count,
            " + ".join(str(len(p)) for p in parts),
            share,
        )
        return parts

    def side_by_side(self, members: list[Job], parts: list[list[DictConfig]]):
        """train_population's stand-in for a group cut into parts: each part in a worker, this process waiting."""
        from makemore_lab import threads
        from makemore_lab.commands import sweep_resume_command
        from makemore_lab.population.processes import train_side_by_side

        dirs = [Path(job.train_config.paths.output_dir) for job in members]
        if members[0].train_config.threads == "auto":
            # the group is one run of threads.py's registry (this process): others on the machine count it once,
            # as it took one run's fair share; its workers do not register, or the next group would count them
            threads.register()

        def train(cfgs: list[DictConfig]) -> list:
            return train_side_by_side(parts, self.workers, lambda: sweep_resume_command(dirs), members[0].env_set)

        return train

    def prepare(self, num: int, overrides: Sequence[str]) -> Job:
        """The job's config as the basic launcher builds it, and run_job's job dir and .hydra/ for it."""
        log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = num
            sweep_config.hydra.job.num = num
        prepared = run_job(
            hydra_context=dataclasses.replace(self.hydra_context, callbacks=NoJobCallbacks()),
            task_function=resolved_train_config,
            config=sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
            configure_logging=False,  # the member's train.log is the engine's (or run_job's, for a job alone)
        )
        job = Job(num, sweep_config, prepared)
        if job.resolves:
            # The same sweep run again into its own dir continues it, as under the basic launcher: a finished or
            # failed job keeps its result, an interrupted one resumes from its last.ckpt (sweep_policy sets
            # ckpt_path in its train config) in whichever population it joins. Looked at here, before any job
            # trains: after training every member's summary.json is this run's own.
            from makemore_lab import sweep_policy

            job.kept = sweep_policy.earlier_outcome(job.train_config, num, prepared.overrides)
        return job

    def keep(self, job: Job) -> JobReturn:
        """A job kept from an earlier run of the sweep: its result, with the callbacks (the sweep table) fired
        around it as run_job fires them around a job that trains."""
        hydra_config = HydraConfig.instance()
        sweep_hydra_cfg = hydra_config.cfg
        try:
            hydra_config.set_config(job.sweep_config)
            self.hydra_context.callbacks.on_job_start(config=job.sweep_config, task_function=self.task_function)
            job.prepared.return_value = job.kept
            self.hydra_context.callbacks.on_job_end(config=job.sweep_config, job_return=job.prepared)
        finally:
            hydra_config.cfg = sweep_hydra_cfg
        return job.prepared

    @staticmethod
    def refusal(job: Job, first: Job, engine: ModuleType | None) -> str | None:
        """Why this job cannot be a member of any population (it then runs alone), or None."""
        if not job.resolves:
            err = job.prepared.return_value
            return f"its config does not resolve: {type(err).__name__}: {err}".splitlines()[0]
        if job.prepared.hydra_cfg.hydra.job.chdir:
            return "hydra.job.chdir=true: each job runs in its own working directory, a population in one"
        if job.env_set != first.env_set:
            return f"its hydra.job.env_set differs from job {first.num}'s: a population is one process, one environment"
        return engine.population_refusal(job.train_config) if engine is not None else None

    def run_alone(self, job: Job) -> JobReturn:
        """Exactly the basic launcher's run of one job."""
        return run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=job.sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )

    def run_population(self, members: list[Job], engine: ModuleType) -> dict[int, JobReturn]:
        """Train the members together; each member's callbacks and result as run_job would give them.

        on_job_start fires for every member before training starts, on_job_end for each after the population
        ends, each with HydraConfig set to that member's config. During training HydraConfig is the sweep's (a
        multirun's, as a job of the basic launcher sees it: the members' reports, typed `+key`s, a Ctrl-C's line).
        """
        from makemore_lab import sweep_policy

        hydra_config = HydraConfig.instance()
        sweep_hydra_cfg = hydra_config.cfg
        callbacks = self.hydra_context.callbacks
        try:
            for job in members:
                hydra_config.set_config(job.sweep_config)
                callbacks.on_job_start(config=job.sweep_config, task_function=self.task_function)
            hydra_config.set_config(self.config)
            parts = self.parts(members)
            # one part: trained here (torch imported now); side by side: in the workers, this process torch-free
            train = engine.train_population if len(parts) == 1 else self.side_by_side(members, parts)
            with env_override(members[0].env_set):
                outcomes = train_members(train, [job.train_config for job in members])
            for job, outcome in zip(members, outcomes, strict=True):
                hydra_config.set_config(job.sweep_config)
                # the earlier results were looked at before training (prepare): this summary.json is this run's
                job.prepared.return_value = sweep_policy.run_job(
                    replay(outcome), job.train_config, continue_sweep=False
                )
                callbacks.on_job_end(config=job.sweep_config, job_return=job.prepared)
        finally:
            hydra_config.cfg = sweep_hydra_cfg
        return {job.num: job.prepared for job in members}
