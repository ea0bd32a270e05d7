"""Pruning by Optuna's pruners (issue 35, item 1) for jobs trained alone, as a user runs it: real multiruns of
./train.py with hydra/sweeper=optuna and hydra.sweeper.pruner, on a real sqlite study (and on none, under the basic
launcher), read back with optuna's API, the jobs' summary.json and the sweep table; a pruned job's checkpoint samples.

The search is a grid (hydra/sweeper/sampler=grid, which also shows a grid being pruned) over lr 0.5, which learns,
and two lrs too small to move the loss; MedianPruner(n_startup_trials=1) prunes a trial whose val loss at a step is
worse than the completed trials' median there. Seeded, the grid runs lr 0.5 first (its order is the study's to
record, and the assertions read it from there): each later trial is pruned at its first validation."""

import csv
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import run_script

optuna = pytest.importorskip("optuna", reason="needs the optuna extra: pip install -e '.[optuna]'")
from optuna.trial import TrialState  # noqa: E402

from makemore_lab.callbacks.pruning import Pruning  # noqa: E402

MAX_STEPS = 60
GOOD_LR = 0.5
SEARCH = [
    "-m",
    "hydra/sweeper=optuna",
    "hydra/sweeper/sampler=grid",
    "hydra.sweeper.sampler.seed=1",  # lr 0.5 first
    f"optimizer.lr=choice({GOOD_LR},0.0002,0.0001)",
    "model.n_hidden=50",
    f"trainer.max_steps={MAX_STEPS}",
    "trainer.val_check_interval=10",
    "trainer.accelerator=cpu",
    "callbacks=none",
    "num_samples=2",
    "threads=1",
]
PRUNED = ["hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=1"]


def search(sweep_dir: Path, small_names, *overrides: str):
    return run_script("train.py", *SEARCH, f"data.path={small_names}", f"hydra.sweep.dir={sweep_dir}", *overrides)


def summary(job_dir: Path) -> dict:
    return json.loads((job_dir / "summary.json").read_text())


def one_line(result) -> str:
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def pruned_search(tmp_path_factory, small_names):
    """(sweep dir, storage): the grid searched with a MedianPruner, its study in sqlite."""
    root = tmp_path_factory.mktemp("pruned")
    sweep_dir, storage = root / "sweep", f"sqlite:///{root / 'study.db'}"
    result = search(sweep_dir, small_names, *PRUNED, f"hydra.sweeper.storage={storage}")
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir, storage


@pytest.mark.slow
def test_a_median_pruner_prunes_the_losing_trials_in_the_study_and_their_jobs(pruned_search):
    sweep_dir, storage = pruned_search
    trials = optuna.load_study(study_name="makemore", storage=storage).trials  # the study's name: no hparams_search
    assert len(trials) == 3 and trials[0].params["optimizer.lr"] == GOOD_LR  # the grid ran every point once
    assert trials[0].state == TrialState.COMPLETE
    assert trials[0].value == pytest.approx(summary(sweep_dir / "0")["val_loss"])
    assert "pruned" not in summary(sweep_dir / "0") and summary(sweep_dir / "0")["steps"] == MAX_STEPS
    for trial in trials[1:]:  # worse than lr 0.5 at step 10: pruned there, not completed, not failed
        assert trial.state == TrialState.PRUNED, trial
        step = trial.user_attrs["pruned_at_step"]
        assert step < MAX_STEPS and max(trial.intermediate_values) == step
        job = summary(sweep_dir / str(trial.number))
        assert job["steps"] == step < MAX_STEPS  # it stopped there
        assert job["pruned"] == {"step": step, "val_loss": pytest.approx(trial.intermediate_values[step])}
        overrides = OmegaConf.load(sweep_dir / str(trial.number) / ".hydra" / "overrides.yaml")
        assert f"optuna_trial={{study_name:'makemore',number:{trial.number}}}" in overrides
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")  # of the COMPLETE trials only
    assert best.best_trial == 0 and best.n_trials == 3 and best.best_value == pytest.approx(trials[0].value)


@pytest.mark.slow
def test_the_table_says_pruned_at_step_n_with_the_last_val_loss(pruned_search):
    sweep_dir, _ = pruned_search
    with (sweep_dir / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows][0] == "0" and "optuna_trial" not in rows[0]  # finished first; no trial column
    for row in rows[1:]:
        pruned = summary(sweep_dir / row["job"])["pruned"]
        assert int(row["pruned_step"]) == pruned["step"] and float(row["pruned_val_loss"]) == pruned["val_loss"]
        assert not row["error"]
    markdown = (sweep_dir / "summary.md").read_text()
    assert "| health | pruned | failed |" in markdown
    for row in rows[1:]:
        line = next(line for line in markdown.splitlines() if line.startswith(f"| {row['job']} |"))
        assert f"pruned at step {row['pruned_step']} (val loss {float(row['pruned_val_loss']):.4f})" in line


@pytest.mark.slow
def test_a_pruned_jobs_checkpoint_samples(pruned_search, small_names):
    sweep_dir, _ = pruned_search
    ckpt = sweep_dir / "1" / "checkpoints" / "last.ckpt"
    result = run_script("sample.py", f"ckpt_path={ckpt}", "num_samples=3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(result.stdout.strip().splitlines()) >= 3
    losses = run_script("eval.py", f"ckpt_path={ckpt}", f"data.path={small_names}")
    assert losses.returncode == 0, losses.stderr[-3000:]


@pytest.mark.slow
def test_without_storage_the_basic_launchers_jobs_reach_the_study_in_memory(tmp_path, small_names):
    result = search(tmp_path / "sweep", small_names, *PRUNED)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = {job: summary(tmp_path / "sweep" / job) for job in ("0", "1", "2")}
    assert "pruned" not in jobs["0"] and all(jobs[job]["pruned"]["step"] < MAX_STEPS for job in ("1", "2"))
    assert OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml").best_trial == 0
    # The same command into its sweep dir (how a sweep is continued): a new in-memory study, whose seeded grid asks
    # the same trials; each job is kept from its dir, and a kept pruned job is a PRUNED trial again, by its record.
    again = search(tmp_path / "sweep", small_names, *PRUNED)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert log.count("finished in an earlier run of this sweep: kept") == 3
    for job in ("1", "2"):
        assert f"trial {job} pruned at step {jobs[job]['pruned']['step']}" in log
    best = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert best.best_trial == 0 and best.best_value == pytest.approx(jobs["0"]["val_loss"])


@pytest.mark.slow
def test_without_a_pruner_nothing_changes(tmp_path, small_names):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    result = search(tmp_path / "sweep", small_names, f"hydra.sweeper.storage={storage}")
    assert result.returncode == 0, result.stderr[-3000:]
    trials = optuna.load_study(study_name="makemore", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3  # n_trials (20) capped at the grid's 3 points
    for trial in trials:
        job_dir = tmp_path / "sweep" / str(trial.number)
        assert "pruned" not in summary(job_dir) and summary(job_dir)["steps"] == MAX_STEPS
        assert not any("optuna_trial" in o for o in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml"))
    with (tmp_path / "sweep" / "summary.csv").open(newline="") as f:
        assert "pruned_step" not in next(csv.reader(f))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["hydra/sweeper/pruner=median", "hydra.sweeper.pruner._target_=optuna.pruners.Median"],
            "hydra.sweeper.pruner._target_=optuna.pruners.Median: Optuna has no such pruner (HyperbandPruner, ",
        ),
        (
            ["hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=-1"],
            "bad hydra.sweeper.pruner (optuna.pruners.MedianPruner): Number of startup trials cannot be negative",
        ),
        (
            ["hydra/sweeper/pruner=hyperband", "+hydra.sweeper.pruner.patience=2"],
            "bad hydra.sweeper.pruner (optuna.pruners.HyperbandPruner): HyperbandPruner.__init__() got an "
            "unexpected keyword argument 'patience'",
        ),
        (
            ["+hydra.sweeper.pruner._target_=os.system"],
            "hydra.sweeper.pruner._target_ must be one of optuna.pruners (e.g. hydra/sweeper/pruner=median), "
            "got 'os.system'",
        ),
        (
            [*PRUNED, "hydra/launcher=joblib"],
            "hydra.sweeper.pruner under JoblibLauncher needs hydra.sweeper.storage",
        ),
        (
            ["+hydra.sweeper.sampler.n_startup_trials=5"],  # a search config's TPE setting, left for the grid
            "bad hydra.sweeper.sampler: GridSampler.__init__() got an unexpected keyword argument 'n_startup_trials' "
            "(remove it: ~hydra.sweeper.sampler.n_startup_trials)",
        ),
        (
            ["optimizer.lr=interval(0.1,0.5)"],
            "hydra/sweeper/sampler=grid needs a grid: optimizer.lr is searched over an interval; use choice() or range()",
        ),
    ],
)
def test_a_bad_pruner_or_grid_is_one_line_before_any_job(tmp_path, small_names, overrides, message):
    storage = tmp_path / "study.db"
    storage_key = [] if "joblib" in str(overrides) else [f"hydra.sweeper.storage=sqlite:///{storage}"]
    result = search(tmp_path / "sweep", small_names, *storage_key, *overrides)
    assert message in one_line(result)
    assert not any((tmp_path / "sweep").rglob("*"))  # no job, nothing written
    assert not storage.exists() or not optuna.get_all_study_names(f"sqlite:///{storage}")


def test_optuna_trial_set_by_hand_is_one_line(tmp_path, small_names):
    result = run_script(
        "train.py",
        "optuna_trial={study_name:makemore,number:0}",
        "trainer.max_steps=10",
        "threads=1",
        f"data.path={small_names}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert "optuna_trial is set by the Optuna sweeper" in one_line(result)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_reporter_prunes_by_the_studys_pruner_but_never_at_the_last_step():
    """Pruning's API, as a population member calls it: report(step, val_loss) -> stop now?"""
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=3.0))
    stopped, finished = Pruning(study.ask(), max_steps=60), Pruning(study.ask(), max_steps=60)
    assert stopped.report(10, 2.9) is False and stopped.pruned is None and stopped.summary_fields() == {}
    assert stopped.report(20, 3.1) is True
    assert stopped.summary_fields() == {"pruned": {"step": 20, "val_loss": 3.1}}
    assert finished.report(60, 3.1) is False  # it trained all its steps: it completed, whatever the pruner says
    trials = study.get_trials(deepcopy=False)
    assert trials[0].user_attrs == {"pruned_at_step": 20} and trials[0].intermediate_values == {10: 2.9, 20: 3.1}
    assert trials[1].user_attrs == {} and trials[1].intermediate_values == {60: 3.1}


@pytest.mark.slow
def test_asha_prunes_within_a_batch_under_the_population_launcher(tmp_path, small_names):
    """Five trials launched as one batch by the population launcher train as one population, each member reporting
    to its own trial: successive halving compares every trial that reached a rung, running ones included, so the
    two lrs too small to learn are pruned at the first rung and stop alone, the others train on."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    result = search(
        tmp_path / "sweep",
        small_names,
        "optimizer.lr=choice(0.5,0.3,0.1,0.0002,0.0001)",
        "hydra/launcher=population",
        "hydra.sweeper.n_jobs=5",
        "hydra/sweeper/pruner=successive_halving",
        "hydra.sweeper.pruner.min_resource=10",
        "hydra.sweeper.pruner.reduction_factor=2",
        f"hydra.sweeper.storage={storage}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "as one population of 5" in result.stdout + result.stderr
    trials = optuna.load_study(study_name="makemore", storage=storage).trials
    pruned = {t.params["optimizer.lr"] for t in trials if t.state == TrialState.PRUNED}
    assert pruned and pruned <= {0.0002, 0.0001}  # the losers, and only they
    assert all(t.state == TrialState.COMPLETE for t in trials if t.params["optimizer.lr"] not in pruned)
    for trial in trials:
        job = summary(tmp_path / "sweep" / str(trial.number))
        assert (job["steps"] < MAX_STEPS) == (trial.state == TrialState.PRUNED) == ("pruned" in job)


def test_a_study_a_job_cannot_reach_is_one_line_and_creates_nothing(tmp_path):
    from makemore_lab.callbacks.pruning import open_trial
    from makemore_lab.errors import UserError

    gone = tmp_path / "gone.db"  # a storage deleted since the sweep began: opening it would create an empty one
    with pytest.raises(UserError, match=r"cannot open study 'mlp': sqlite:///.*gone.db has no file"):
        open_trial(f"sqlite:///{gone}", "mlp", 0, optuna.pruners.MedianPruner())
    assert not gone.exists()
    with pytest.raises(UserError, match="study 'elsewhere' has no hydra.sweeper.storage and lives in another process"):
        open_trial(None, "elsewhere", 0, optuna.pruners.MedianPruner())
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="mlp", storage=storage)
    study.tell(study.ask(), 1.0)
    assert open_trial(storage, "mlp", 0, optuna.pruners.MedianPruner()) is None  # told already: nothing to report to
    with pytest.raises(UserError, match="study 'mlp' has no trial 5 to report to"):
        open_trial(storage, "mlp", 5, optuna.pruners.MedianPruner())


@pytest.mark.slow
def test_an_interrupted_pruned_population_search_is_continued_by_the_command_it_printed(tmp_path, small_names):
    """Ctrl-C while a batch trains as one population (members pruned by then keep their summary.json): the printed
    command runs the same trials again in the same sweep dir, each pruned job kept, each interrupted one resumed from its last.ckpt,
    and the study ends with every trial told (none left RUNNING) and no new trial asked (n_trials counts them)."""
    import shlex
    import signal

    from test_interrupt_resume import saved_step, start_train_py, wait_for

    sweep_dir, storage = tmp_path / "sweep", f"sqlite:///{tmp_path / 'study.db'}"
    proc = start_train_py(
        "-m",
        "hydra/sweeper=optuna",
        "hydra/launcher=population",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=4",
        "hydra/sweeper/pruner=successive_halving",
        "hydra.sweeper.pruner.min_resource=10",
        "hydra.sweeper.pruner.reduction_factor=2",
        f"hydra.sweeper.storage={storage}",
        "optimizer.lr=choice(0.5,0.3,0.0002,0.0001)",
        "model.n_hidden=16",
        "trainer.max_steps=3000",
        "trainer.val_check_interval=10",
        "trainer.accelerator=cpu",
        "~callbacks.progress_bar",
        "callbacks.last_checkpoint.every_seconds=0.5",
        "logger=none",
        "threads=1",
        f"data.path={small_names}",
        f"hydra.sweep.dir={sweep_dir}",
    )
    for job in range(4):
        wait_for(sweep_dir / str(job) / "checkpoints" / "last.ckpt", proc, timeout=180)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    [line] = [line for line in err.splitlines() if "Resume with:" in line]
    stopped = {d.name: saved_step(d / "checkpoints" / "last.ckpt") for d in sweep_dir.glob("[0-9]*")}
    kept = {
        d.name: (d / "summary.json").read_bytes() for d in sweep_dir.glob("[0-9]*") if (d / "summary.json").exists()
    }
    assert len(kept) < 4  # members still training when stopped (those pruned by then have their summary.json)
    again = run_script("train.py", *shlex.split(line.split("Resume with: ", 1)[1])[2:], timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "continuing trial(s) 0,1,2,3, interrupted in an earlier run of this sweep" in again.stdout + again.stderr
    trials = optuna.load_study(study_name="makemore", storage=storage).trials
    assert len(trials) == 4 and {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    for job, summary_bytes in kept.items():
        assert (sweep_dir / job / "summary.json").read_bytes() == summary_bytes  # a pruned job is kept, not rerun
    for job in set(stopped) - set(kept):
        resumed = summary(sweep_dir / job)
        assert resumed["resumed_from_step"] == stopped[job] < resumed["steps"]
