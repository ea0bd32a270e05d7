"""Our Optuna sweeper (src/hydra_plugins/makemore_optuna_sweeper), run as a user runs it: real multiruns of ./train.py
(tiny step counts) on a real sqlite study, read back with optuna's own API and the sweep's summary table."""

import importlib.metadata
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from packaging.version import Version

from conftest import TINY, run_script
from hydra_plugins.makemore_optuna_sweeper import optuna_sweeper
from test_sweeps import check_rows_match_jobs, read_rows

optuna = pytest.importorskip("optuna", reason="needs the optuna extra: pip install -e '.[optuna]'")
SEARCHED = ("optimizer.lr", "model.n_hidden", "data.batch_size")  # hparams_search=mlp_optuna's params


def test_the_optuna_extra_is_a_current_optuna_on_sqlalchemy_2():
    assert Version(importlib.metadata.version("optuna")) >= Version("4")
    assert Version(importlib.metadata.version("sqlalchemy")) >= Version("2")
    with pytest.raises(importlib.metadata.PackageNotFoundError):  # the old plugin would clash with hydra/sweeper=optuna
        importlib.metadata.version("hydra-optuna-sweeper")


def search(sweep_dir: Path, storage: str, small_names, *overrides: str):
    return run_script(
        "train.py",
        "-m",
        "hparams_search=mlp_optuna",
        f"hydra.sweeper.storage={storage}",
        *overrides,
        *TINY,
        f"data.path={small_names}",
        f"hydra.sweep.dir={sweep_dir}",
    )


def trial_params(rows: list[dict]) -> set[tuple]:
    return {tuple(row[key] for key in SEARCHED) for row in rows}


@pytest.mark.slow
def test_a_search_ranks_its_trials_and_the_same_command_resumes_the_study(tmp_path, small_names):
    sweep_dir, storage = tmp_path / "optuna", f"sqlite:///{tmp_path / 'study.db'}"
    first = search(sweep_dir, storage, small_names, "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Launching 2 jobs" in first.stdout + first.stderr  # n_jobs trials asked at once, one launcher batch
    rows = read_rows(sweep_dir)
    assert sorted(r["job"] for r in rows) == ["0", "1", "2", "3"]
    check_rows_match_jobs(sweep_dir, rows)  # one row per trial, best val loss first
    for row in rows:
        assert 0.01 <= float(row["optimizer.lr"]) <= 1.0
        assert int(row["model.n_hidden"]) in (50, 100, 200, 300, 400)
        assert int(row["data.batch_size"]) in (16, 32, 64, 128)
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert best.best_value == pytest.approx(float(rows[0]["val_loss"]))
    assert {k: str(v) for k, v in best.best_params.items()} == {k: rows[0][k] for k in SEARCHED}

    # The same command again: the study (named after the search) goes on from its 4 trials, into job dirs 4 and 5.
    second = search(sweep_dir, storage, small_names, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2")
    assert second.returncode == 0, second.stderr[-3000:]
    study = optuna.load_study(study_name="mlp_optuna", storage=storage)
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4, 5]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    rows = read_rows(sweep_dir)
    assert sorted(int(r["job"]) for r in rows) == [0, 1, 2, 3, 4, 5]
    for trial in study.trials:  # job dir N is trial N, with trial N's params and value
        row = next(r for r in rows if r["job"] == str(trial.number))
        assert float(row["val_loss"]) == pytest.approx(trial.value)
        assert {k: str(v) for k, v in trial.params.items()} == {k: row[k] for k in SEARCHED}
    new = [r for r in rows if int(r["job"]) >= 4]
    assert not trial_params(new) & trial_params([r for r in rows if int(r["job"]) < 4])  # the seed moved on
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert best.n_trials == 6 and best.best_value == pytest.approx(study.best_value)


@pytest.mark.slow
def test_failed_trials_are_failed_in_the_study_and_the_search_goes_on(tmp_path, small_names):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    result = search(tmp_path / "sweep", storage, small_names, "hydra.sweeper.n_trials=2", "max_params=100")
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="mlp_optuna", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
    rows = read_rows(tmp_path / "sweep")
    assert len(rows) == 2 and all("parameters, more than max_params=100" in r["error"] for r in rows)
    assert not (tmp_path / "sweep" / "optimization_results.yaml").exists()  # no best of no finished trial


def test_a_sampler_outside_optuna_is_refused_before_any_trial():
    # through the module: Hydra's plugin scan re-executes it, which makes its classes anew
    sweeper = optuna_sweeper.OptunaSweeper(
        sampler=OmegaConf.create({"_target_": "os.system"}),
        direction="minimize",
        storage=None,
        study_name=None,
        n_trials=1,
        n_jobs=1,
    )
    with pytest.raises(
        optuna_sweeper.SweeperError, match="sampler._target_ must be one of optuna.samplers, got 'os.system'"
    ):
        sweeper.build_sampler(trials_before=0)


@pytest.mark.parametrize(
    "sweep, expected",
    [
        ("choice(16, 32, 64)", optuna.distributions.CategoricalDistribution([16, 32, 64])),
        ("range(1, 10, 3)", optuna.distributions.IntDistribution(1, 7, step=3)),  # Hydra's range stops before 10
        ("interval(0.0, 0.3)", optuna.distributions.FloatDistribution(0.0, 0.3)),
        ("interval(2, 8)", optuna.distributions.FloatDistribution(2.0, 8.0)),  # Hydra's intervals are floats
        ("tag(log, interval(0.01, 1.0))", optuna.distributions.FloatDistribution(0.01, 1.0, log=True)),
    ],
)
def test_hydra_sweep_syntax_becomes_optuna_distributions(sweep, expected):
    from hydra_plugins.makemore_optuna_sweeper._search_space import distribution

    (override,) = OverridesParser.create().parse_overrides([f"optimizer.lr={sweep}"])
    assert distribution(override) == expected
