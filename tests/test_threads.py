"""threads=auto: each run takes a fair share of the cores, counting the other runs on the machine."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from makemore_lab import threads
from makemore_lab.callbacks.thread_budget import ThreadBudget


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "REGISTRY", tmp_path / "runs")
    monkeypatch.setattr(threads, "cores", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    yield tmp_path / "runs"
    torch.set_num_threads(before)


def another_run(registry: Path) -> subprocess.Popen:
    """A process registered as a run in `registry` (as threads.choose('auto') registers one), alive until killed."""
    code = (
        f"import pathlib, time, makemore_lab.threads as t; t.REGISTRY = pathlib.Path({str(registry)!r}); "
        "t.register(); print('registered', flush=True); time.sleep(120)"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "registered"
    return process


def test_a_run_alone_gets_every_core_and_shares_them_with_live_runs(registry):
    assert threads.choose("auto") and torch.get_num_threads() == 4
    other = another_run(registry)
    try:
        (registry / "999999999.lock").touch()  # a run that died without cleaning up: not locked, not counted, removed
        (registry / "12345").touch()  # an entry of an older version: removed
        assert threads.fair_share() == 2
        assert not (registry / "999999999.lock").exists() and not (registry / "12345").exists()
        budget = ThreadBudget(every_seconds=0)
        budget.on_train_batch_end(None)
        assert torch.get_num_threads() == 2
    finally:
        other.kill()
        other.wait()
    budget.on_train_batch_end(None)  # the other run ended: this one speeds up again
    assert torch.get_num_threads() == 4


def test_the_users_choice_is_left_alone(registry, monkeypatch):
    assert not threads.choose(3) and torch.get_num_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(2)
    assert not threads.choose("auto") and torch.get_num_threads() == 2
    assert not registry.exists()  # neither choice registers the run


def test_four_runs_on_two_cores_get_one_thread_each(registry, monkeypatch):
    monkeypatch.setattr(threads, "cores", lambda: 2)
    threads.register()
    others = [another_run(registry) for _ in range(3)]
    try:
        assert threads.live_runs() == 4 and threads.fair_share() == 1
    finally:
        for other in others:
            other.kill()
            other.wait()
    assert threads.live_runs() == 1  # a killed run's lock went with it


def test_a_killed_run_is_not_counted(registry):
    """No signal is sent to probe a process (os.kill(pid, 0) ends it on Windows): the lock tells."""
    other = another_run(registry)
    assert threads.live_runs() == 1  # the other one; this process has not registered
    other.kill()
    other.wait()
    assert threads.live_runs() == 1 and list(registry.iterdir()) == []  # max(count, 1); its entry removed


def test_counting_a_budget_imports_neither_torch_nor_lightning():
    """The population launcher counts a sweep's threads before it spawns the workers that import torch."""
    code = (
        "import sys, makemore_lab.threads as t, makemore_lab.population.processes; t.budget('auto'); "
        "print(sorted({'torch', 'pytorch_lightning'} & set(sys.modules)))"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert found.returncode == 0 and found.stdout.strip() == "[]", found.stderr
