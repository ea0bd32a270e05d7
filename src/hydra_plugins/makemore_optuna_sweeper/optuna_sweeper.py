"""`hydra/sweeper=optuna`: Optuna's ask-and-tell loop as a Hydra sweeper, on optuna >= 4 (docs/optuna.md).

Why ours: hydra-optuna-sweeper (even its latest release) requires optuna < 3, and with it SQLAlchemy < 2. This one
keeps its config keys (params, n_trials, n_jobs, sampler, direction, storage, study_name) and its
optimization_results.yaml, and adds `pruner` (Optuna's pruners: each job reports its val losses to its trial, through
makemore_lab.callbacks.pruning, and stops when the pruner says so; the trial is then PRUNED in the study). Each batch of `n_jobs` trials is asked of the study at once and launched as one launcher
batch (a parallel launcher runs them together); job dir N is the study's trial N, so a resumed study's new trials
land beside the old ones. optuna itself is imported only when a sweep starts: Hydra imports this module on every
run to find its plugins.
"""

import contextlib
import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.errors import CompactHydraException
from hydra.plugins.sweeper import Sweeper
from hydra.utils import instantiate
from omegaconf import MISSING, DictConfig, OmegaConf

from makemore_lab.atomic_write import write_text_atomically

log = logging.getLogger(__name__)

RESULTS_FILE = "optimization_results.yaml"
PRUNED_ATTR = "pruned_at_step"  # a trial's user attribute, set by its job when the pruner stops it (for the dashboard)


@dataclass
class TPESamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = None
    n_startup_trials: int = 10  # random trials before TPE starts modelling


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: int | None = None


@dataclass
class GridSamplerConf:
    _target_: str = "optuna.samplers.GridSampler"  # its search_space: the grid of hydra.sweeper.params
    seed: int | None = None


# Optuna's pruners (`hydra/sweeper/pruner=median`, or `hydra.sweeper.pruner._target_` and its arguments): steps are
# optimizer steps (trainer.global_step), reported at each validation (trainer.val_check_interval).
@dataclass
class MedianPrunerConf:
    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5  # no pruning until this many trials have completed
    n_warmup_steps: int = 0  # no pruning of a trial before this step
    interval_steps: int = 1
    n_min_trials: int = 1  # completed trials that reported at a step before a trial is pruned there


@dataclass
class SuccessiveHalvingPrunerConf:
    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"  # steps before the first rung; auto: from the first trial that completes
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


@dataclass
class HyperbandPrunerConf:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"  # auto: the steps of the first trial that completes
    reduction_factor: int = 3
    bootstrap_count: int = 0


@dataclass
class NopPrunerConf:
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.makemore_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    _recursive_: bool = False  # the sweeper builds the sampler itself (checked, and reseeded on resume)
    # _self_ first: a pruner option (hydra/sweeper/pruner=median) wins over `pruner: None`
    defaults: list[Any] = field(default_factory=lambda: ["_self_", {"sampler": "tpe"}, {"pruner": None}])
    sampler: Any = MISSING
    pruner: Any = None  # e.g. hydra/sweeper/pruner=median: trials report their val losses and stop when pruned
    direction: str = "minimize"
    storage: str | None = None  # e.g. sqlite:///study.db: the study persists, and the same command resumes it
    study_name: str | None = None  # default: the hparams_search option's name
    n_trials: int = 20  # trials this sweep adds to the study
    n_jobs: int = 1  # trials asked at once and launched as one batch
    params: dict[str, str] | None = None  # key: Hydra sweep syntax (choice, range, interval, tag(log, ...))


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="makemore_lab")
# Sampler and pruner options as open nodes (dicts, not typed dataclasses): a search config's keys (`sampler.n_startup_trials`
# for TPE) merge into any option, and one the class does not take is a one-line error naming the `~` that removes it.
for _name, _node in (("tpe", TPESamplerConf), ("random", RandomSamplerConf), ("grid", GridSamplerConf)):
    ConfigStore.instance().store(
        group="hydra/sweeper/sampler", name=_name, node=asdict(_node()), provider="makemore_lab"
    )
for _name, _node in (
    ("median", MedianPrunerConf),
    ("successive_halving", SuccessiveHalvingPrunerConf),
    ("hyperband", HyperbandPrunerConf),
    ("nop", NopPrunerConf),
):
    ConfigStore.instance().store(
        group="hydra/sweeper/pruner", name=_name, node=asdict(_node()), provider="makemore_lab"
    )


class SweeperError(CompactHydraException):
    """A bad sweeper setting: Hydra prints it as one line and exits non-zero."""


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        sampler: DictConfig,
        direction: str,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        params: dict | None = None,
        pruner: DictConfig | None = None,
    ):
        super().__init__()
        if direction not in ("minimize", "maximize"):
            raise SweeperError(f"hydra.sweeper.direction must be minimize or maximize, got {direction!r}")
        for key, value in (("n_trials", n_trials), ("n_jobs", n_jobs)):
            if value < 1:
                raise SweeperError(f"hydra.sweeper.{key} must be a positive integer, got {value}")
        self.sampler, self.direction, self.storage = sampler, direction, storage
        self.study_name, self.n_trials, self.n_jobs = study_name, n_trials, n_jobs
        self.params = dict(params or {})
        self.pruner = pruner
        self.config = self.launcher = self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> list[list[JobReturn]]:
        try:
            import optuna
        except ImportError:
            raise SweeperError(
                "the Optuna sweeper needs optuna: pip install 'makemore-lab[optuna]' "
                "(in a clone: pip install -e '.[optuna]')"
            ) from None

        from hydra_plugins.makemore_optuna_sweeper._search_space import UnsupportedSweep, distribution

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        # the config's params first: the command line's value for the same key wins
        overrides = parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        space, fixed = {}, {}
        for override in overrides:
            key = override.get_key_element()
            space.pop(key, None)
            fixed.pop(key, None)
            try:
                if override.is_sweep_override():
                    space[key] = distribution(override)
                else:
                    fixed[key] = override.input_line
            except (UnsupportedSweep, ValueError) as err:
                raise SweeperError(f"hydra.sweeper.params: {err}") from None

        pruner = build_pruner(self.pruner)  # a bad pruner: one line, before the study is opened
        self.check_pruning_reaches_jobs(pruner)
        study = self._open_study(optuna, space, pruner)
        self.check_same_search(study, space)  # refused before the sweep dir holds anything of this sweep
        n_trials = self.n_trials
        if isinstance(study.sampler, optuna.samplers.GridSampler):  # more trials would repeat the grid's points
            points = math.prod(len(values) for values in grid_search_space(space).values())
            done = sum(trial.state.is_finished() for trial in study.get_trials(deepcopy=False))
            left = max(points - done, 0)  # a continued study's grid: the points it has not run (GridSampler's rule)
            if n_trials > left:
                log.info("the grid has %d points, %d not run yet: %d trials, not %d", points, left, left, n_trials)
                n_trials = left
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomically(sweep_dir / "multirun.yaml", OmegaConf.to_yaml(self.config))
        log.info(
            "study %r: %d trials before this sweep, %d to run, %d at a time; searching %s%s",
            study.study_name,
            len(study.trials),
            n_trials,
            self.n_jobs,
            ", ".join(space) or "nothing",
            f"; pruned by {type(pruner).__name__}" if pruner else "",
        )

        # Trials an interrupted run of this sweep left RUNNING, with their job dirs here: continued first (each job
        # resumes from its last.ckpt, or keeps its summary.json), and counted in this command's n_trials
        interrupted = [
            t
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            if (sweep_dir / str(t.number) / ".hydra").is_dir() and set(t.params) == set(space)
        ]
        if interrupted:
            log.info(
                "continuing trial(s) %s, interrupted in an earlier run of this sweep",
                ",".join(str(t.number) for t in interrupted),
            )
        returns = [
            self.run_batch(study, batch, space, fixed, pruner, optuna)
            for batch in consecutive_batches(interrupted, self.n_jobs)
        ]
        n_trials = max(0, n_trials - len(interrupted))
        for start in range(0, n_trials, self.n_jobs):
            trials = [self.ask(study, space, optuna) for _ in range(min(self.n_jobs, n_trials - start))]
            returns.append(self.run_batch(study, trials, space, fixed, pruner, optuna))
        self._write_results(study, sweep_dir)
        return returns

    def run_batch(self, study, trials: list, space: dict, fixed: dict, pruner, optuna) -> list[JobReturn]:
        """Launch `trials` (consecutive numbers: job dir N is trial N) as one launcher batch, and tell each its
        result."""
        batch = [
            [
                *fixed.values(),
                *(f"{key}={trial.params[key]}" for key in space),
                *(trial_override(study, trial) if pruner else []),
            ]
            for trial in trials
        ]
        self.validate_batch_is_legal(batch)
        results = self.launcher.launch(batch, initial_job_idx=trials[0].number)
        for trial, result in zip(trials, results):
            value = trial_value(result)
            pruned = pruned_step(result) if pruner and value is not None else None
            if value is None:  # a failed job (sweep_policy returns +inf), a crash, or no number: Optuna's FAIL
                tell(study, trial.number, state=optuna.trial.TrialState.FAIL)
            elif pruned is not None:  # its job stopped when the pruner said so (its last.ckpt is kept)
                log.info("trial %d pruned at step %d", trial.number, pruned)
                tell(study, trial.number, state=optuna.trial.TrialState.PRUNED)
            else:
                tell(study, trial.number, value)
        return results

    def check_pruning_reaches_jobs(self, pruner) -> None:
        """A job reports to its trial through the study's storage (makemore_lab.callbacks.pruning): without one,
        only a job in this process (Hydra's basic launcher) can reach the in-memory study."""
        if pruner is None or self.storage:
            return
        launcher = self.config.hydra.launcher.get("_target_", "")
        if launcher != BASIC_LAUNCHER:
            raise SweeperError(
                f"hydra.sweeper.pruner under {launcher.rsplit('.', 1)[-1]} needs hydra.sweeper.storage (e.g. "
                "sqlite:///logs/optuna.db): its jobs run in other processes and report to the study there"
            )

    def _open_study(self, optuna, space: dict | None = None, pruner=None):
        """Create the study, or load it from `storage`. A resumed study's sampler seed is offset by its trial count,
        so that a seeded sampler does not propose the first sweep's random trials again. Two searches that start
        at once on one new storage would race on creating its tables (and the study): under storage_lock, one
        creates them and the other finds them."""
        name = self.study_name or self.config.hydra.runtime.choices.get("hparams_search") or "makemore"
        before = 0
        storage = optuna.storages.InMemoryStorage()  # the jobs of this process reach it (pruning.IN_MEMORY)
        with storage_lock(self.storage):
            if self.storage:
                try:
                    storage = optuna.storages.RDBStorage(self.storage)
                except Exception as err:  # a bad URL, a driver missing, a file that is not a database
                    raise SweeperError(
                        f"hydra.sweeper.storage={self.storage} cannot be opened: "
                        f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                    ) from None
                try:
                    before = len(optuna.load_study(study_name=name, storage=storage).trials)
                except KeyError:  # no such study yet
                    pass
            study = optuna.create_study(
                study_name=name,
                storage=storage,
                sampler=self.build_sampler(before, space),
                pruner=pruner,
                direction=self.direction,
                load_if_exists=True,
            )
        if study.direction.name.lower() != self.direction:
            raise SweeperError(
                f"study {name!r} in {self.storage} was created to {study.direction.name.lower()}, "
                f"not to {self.direction}: use another hydra.sweeper.study_name"
            )
        if pruner is not None and not self.storage:
            from makemore_lab.callbacks import pruning

            pruning.IN_MEMORY[name] = (study, storage)
        return study

    def check_same_search(self, study, space: dict) -> None:
        """A stored study holds one search: a parameter its trials drew from another distribution (other choices,
        another type) is refused before any trial is asked, with the study's name and storage."""
        from optuna.distributions import check_distribution_compatibility

        known = {}
        for trial in study.trials:
            known.update(trial.distributions)
        for key, dist in space.items():
            if key not in known:
                continue
            try:
                check_distribution_compatibility(known[key], dist)
            except ValueError:
                raise SweeperError(
                    self.another_search(study, f"its trials drew {key} from {known[key]}, this search from {dist}")
                ) from None

    def another_search(self, study, detail: str) -> str:
        return (
            f"study {study.study_name!r} in {self.storage} holds another search ({detail}): use another "
            "hydra.sweeper.study_name (or storage) for this search, or run that search's own command"
        )

    def ask(self, study, space: dict, optuna):
        """study.ask(space), but a trial whose values cannot be drawn is told FAIL, not left RUNNING in the stored
        study for ever (Optuna's own ask creates the trial before it draws)."""
        from optuna.distributions import CategoricalDistribution, IntDistribution

        trial = study.ask()
        try:
            for key, dist in space.items():
                if isinstance(dist, CategoricalDistribution):
                    trial.suggest_categorical(key, dist.choices)
                elif isinstance(dist, IntDistribution):
                    trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
                else:
                    trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)
        except Exception as err:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            detail = f"trial {trial.number}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            raise SweeperError(
                self.another_search(study, detail) + f"; trial {trial.number} is marked failed"
            ) from None
        return trial

    def build_sampler(self, trials_before: int, space: dict | None = None):
        target = self.sampler.get("_target_", "")
        if not str(target).startswith("optuna.samplers."):  # a config names a class: only Optuna's samplers
            raise SweeperError(f"hydra.sweeper.sampler._target_ must be one of optuna.samplers, got {target!r}")
        seed = self.sampler.get("seed")
        arguments = {"seed": seed + trials_before} if seed is not None else {}
        if target == "optuna.samplers.GridSampler":
            if "search_space" in self.sampler:
                raise SweeperError(
                    "hydra.sweeper.sampler.search_space: the grid is hydra.sweeper.params' (choice() and range() "
                    "values); remove search_space"
                )
            arguments["search_space"] = grid_search_space(space or {})
        try:
            return instantiate(self.sampler, **arguments)
        except Exception as err:
            cause = err.__cause__ or err
            unknown = re.search(r"unexpected keyword argument '(\w+)'", str(cause))
            hint = f" (remove it: ~hydra.sweeper.sampler.{unknown[1]})" if unknown else ""
            raise SweeperError(f"bad hydra.sweeper.sampler: {cause}{hint}") from None

    def _write_results(self, study, sweep_dir: Path) -> None:
        from optuna.trial import TrialState

        # COMPLETE only: Optuna gives a PRUNED trial its last reported value, which is no result of a whole run
        completed = [
            t for t in study.trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)
        ]
        if not completed:
            log.warning("no trial of study %r finished: no %s", study.study_name, RESULTS_FILE)
            return
        best = study.best_trial
        results = {
            "name": "optuna",
            "study_name": study.study_name,
            "storage": self.storage,
            "n_trials": len(study.trials),
            "best_trial": best.number,
            "best_params": best.params,
            "best_value": best.value,
        }
        write_text_atomically(sweep_dir / RESULTS_FILE, OmegaConf.to_yaml(OmegaConf.create(results)))
        log.info(
            "best of %d trials: trial %d, value %.4f, %s",
            len(study.trials),
            best.number,
            best.value,
            " ".join(f"{k}={v}" for k, v in best.params.items()),
        )


BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"  # its jobs run in this process


def build_pruner(node: DictConfig | None):
    """hydra.sweeper.pruner -> one of Optuna's pruners (None without one); a target outside optuna.pruners, an
    unknown one or a bad argument is one line. The sweeper checks it before any trial; each job builds the same
    pruner from its HydraConfig (makemore_lab.callbacks.pruning), since a stored study does not keep its pruner."""
    if node is None:
        return None
    if not isinstance(node, DictConfig) or not str(node.get("_target_", "")).startswith("optuna.pruners."):
        shown = node.get("_target_") if isinstance(node, DictConfig) else node
        raise SweeperError(
            f"hydra.sweeper.pruner._target_ must be one of optuna.pruners (e.g. hydra/sweeper/pruner=median), "
            f"got {shown!r}"
        )
    import optuna.pruners

    name = node._target_.removeprefix("optuna.pruners.")
    if not isinstance(getattr(optuna.pruners, name, None), type):
        known = ", ".join(n for n in optuna.pruners.__all__ if n.endswith("Pruner") and n != "BasePruner")
        raise SweeperError(f"hydra.sweeper.pruner._target_={node._target_}: Optuna has no such pruner ({known})")
    for value in node.values():  # a nested pruner (PatientPruner's wrapped_pruner) is Optuna's too
        if isinstance(value, DictConfig) and "_target_" in value:
            build_pruner(value)
    try:
        return instantiate(node)
    except Exception as err:
        cause = err.__cause__ or err
        detail = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        unknown = re.search(r"unexpected keyword argument '(\w+)'", detail)
        hint = f" (remove it: ~hydra.sweeper.pruner.{unknown[1]})" if unknown else ""
        raise SweeperError(f"bad hydra.sweeper.pruner ({node._target_}): {detail}{hint}") from None


def grid_search_space(space: dict) -> dict[str, list]:
    """GridSampler's search_space from the params' distributions: choice() values, range() grids; an interval()
    has no grid (one line)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    grid = {}
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            grid[key] = list(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            grid[key] = list(range(dist.low, dist.high + 1, dist.step))
        elif getattr(dist, "step", None) is not None:
            n = round((dist.high - dist.low) / dist.step)
            grid[key] = [dist.low + i * dist.step for i in range(n + 1)]
        else:
            raise SweeperError(
                f"hydra/sweeper/sampler=grid needs a grid: {key} is searched over an interval; use choice() or range()"
            )
    return grid


def consecutive_batches(trials: list, size: int) -> list[list]:
    """`trials` (by number) in batches of at most `size` consecutive numbers (a launcher batch numbers its jobs
    from its first)."""
    batches: list[list] = []
    for trial in sorted(trials, key=lambda t: t.number):
        if batches and len(batches[-1]) < size and batches[-1][-1].number == trial.number - 1:
            batches[-1].append(trial)
        else:
            batches.append([trial])
    return batches


def tell(study, trial, *args, **kwargs) -> None:
    """study.tell. GridSampler, told its grid's last trial, calls study.stop(), which Optuna allows only inside
    study.optimize (RuntimeError) after the trial's state is stored: this loop ends by itself (n_trials is at most
    the grid's size), so that one error is no error here."""
    try:
        study.tell(trial, *args, **kwargs)
    except RuntimeError as err:
        if "Study.stop" not in str(err):
            raise


def trial_override(study, trial) -> list[str]:
    """The job's `optuna_trial` (train.yaml): which trial of which study it reports its val losses to. Where that
    study lives is hydra.sweeper.storage, the user's setting, never this key's."""
    name = study.study_name.replace("\\", "\\\\").replace("'", "\\'")
    return [f"optuna_trial={{study_name:'{name}',number:{trial.number}}}"]


def pruned_step(result: JobReturn) -> int | None:
    """The step at which the job's pruner stopped it, from the job's own record, its summary.json's `pruned` (in its
    job dir, which the sweep table reads too): also a job kept from an earlier run of the same sweep into its dir,
    whose new trial heard nothing from it. None for a job that trained to its end."""
    try:
        summary_file = Path(result.hydra_cfg.hydra.runtime.output_dir) / "summary.json"
        pruned = json.loads(summary_file.read_text()).get("pruned") if summary_file.is_file() else None
    except (AttributeError, OSError, ValueError):
        return None
    return pruned.get("step") if isinstance(pruned, dict) else None


def sqlite_file(storage: str | None) -> Path | None:
    """The file of a SQLite storage URL (sqlite:///<path>), else None."""
    if not storage or not storage.startswith("sqlite:///") or storage == "sqlite:///:memory:":
        return None
    return Path(storage.removeprefix("sqlite:///").split("?", 1)[0])


@contextlib.contextmanager
def storage_lock(storage: str | None):
    """A lock beside a SQLite storage's file (`<file>.lock`, filelock's) while the study is opened or created: two
    searches starting at once on one new file would both create its tables, and one would fail. Other databases
    (PostgreSQL, MySQL) serialise that themselves."""
    path = sqlite_file(storage)
    if path is None:
        yield
        return
    if not path.parent.is_dir():
        raise SweeperError(f"hydra.sweeper.storage={storage}: the directory {path.parent} does not exist")
    with FileLock(str(path) + ".lock"):
        yield


def trial_value(result: JobReturn) -> float | None:
    """The job's return value as Optuna's objective; None for a failed job or a non-finite value."""
    try:
        value = result.return_value  # raises the job's exception if it failed
    except Exception as err:
        log.error("a trial's job failed: %s: %s", type(err).__name__, err)
        return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None
