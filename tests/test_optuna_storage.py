"""Optuna storage (issue 36, item 6): a stored study holds one search (another search's study name is one line that
says so, and leaves no trial RUNNING), and two searches creating one new storage at once both open it."""

import multiprocessing
from pathlib import Path

import optuna
import pytest
from hydra.errors import CompactHydraException
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from conftest import TINY, run_script
from hydra_plugins.makemore_optuna_sweeper.optuna_sweeper import OptunaSweeper


def sweeper(storage: str, study_name: str = "s") -> OptunaSweeper:
    sampler = OmegaConf.create({"_target_": "optuna.samplers.RandomSampler", "seed": 0})
    return OptunaSweeper(
        sampler=sampler, direction="minimize", storage=storage, study_name=study_name, n_trials=1, n_jobs=1
    )


def search(sweep_dir: Path, storage: str, small_names, *overrides: str):
    return run_script(
        "train.py",
        "-m",
        "hparams_search=mlp_optuna",
        f"hydra.sweep.dir={sweep_dir}",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.n_trials=1",
        *overrides,
        *TINY,
        f"data.path={small_names}",
    )


def test_another_search_in_a_stored_study_is_one_line_and_leaves_nothing_running(tmp_path, small_names):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = search(tmp_path / "first", storage, small_names)
    assert first.returncode == 0, first.stderr[-3000:]
    other = search(tmp_path / "second", storage, small_names, "model.n_hidden=choice(7,9)")
    assert other.returncode != 0 and "Traceback" not in other.stderr, other.stderr[-3000:]
    line = other.stderr.strip().splitlines()[-1]
    assert "study 'mlp_optuna' in " + storage + " holds another search" in line and "model.n_hidden" in line, line
    study = optuna.load_study(study_name="mlp_optuna", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]  # nothing asked, nothing left RUNNING
    assert not any(
        (tmp_path / "second").rglob("*")
    )  # the refused sweep wrote nothing (its corrected rerun may go there)


def test_a_trial_that_cannot_be_drawn_is_failed_not_left_running(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    search_ = sweeper(storage)
    study = search_._open_study(optuna)
    study.enqueue_trial({"x": "a"})
    trial = search_.ask(study, {"x": CategoricalDistribution(["a", "b"])}, optuna)
    study.tell(trial, 1.0)
    # A search whose space no longer fits the study: Optuna's own ask(space) raised after creating the trial,
    # which stayed RUNNING in the storage for ever.
    # (its base class: Hydra's plugin discovery may import the sweeper's module again, with its own SweeperError)
    with pytest.raises(
        CompactHydraException,
        match=r"study 's' in .* holds another search \(trial 1: ValueError.*trial "
        r"1 is marked failed",
    ):
        search_.ask(study, {"x": CategoricalDistribution(["c", "d"])}, optuna)
    with pytest.raises(CompactHydraException, match=r"holds another search \(its trials drew x from Categorical"):
        search_.check_same_search(study, {"x": FloatDistribution(0.0, 1.0)})
    states = [t.state for t in optuna.load_study(study_name="s", storage=storage).trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL]


def open_study(barrier, storage: str, results) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    barrier.wait()  # all at once
    try:
        sweeper(storage)._open_study(optuna)
        results.put("ok")
    except Exception as err:  # the race: "table ... already exists", a unique constraint, a locked database
        results.put(f"{type(err).__name__}: {err}".splitlines()[0])


def test_searches_that_create_one_new_storage_at_once_all_open_it(tmp_path):
    context = multiprocessing.get_context("fork")
    for attempt in range(3):  # the race lost without the lock in 18 of 30 openings, on this machine
        storage = f"sqlite:///{tmp_path / f'new_{attempt}.db'}"
        barrier, results = context.Barrier(6), context.Queue()
        processes = [context.Process(target=open_study, args=(barrier, storage, results)) for _ in range(6)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(60)
        assert [results.get(timeout=10) for _ in processes] == ["ok"] * 6
        assert len(optuna.get_all_study_names(storage)) == 1
