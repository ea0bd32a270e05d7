"""A group of jobs as populations side by side in several processes (makemore_lab/population/processes.py): the
rules for how many, and real multiruns of ./train.py under the population launcher read back (their logs, job dirs,
summaries), against the same sweep in one process, and stopped by a signal."""

import importlib.metadata
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from datetime import datetime

import pytest
from omegaconf import OmegaConf

from conftest import ROOT, run_script
from makemore_lab.errors import UserError
from makemore_lab.population.processes import (
    MIN_MEMBERS,
    Workers,
    environment,
    process_count,
    split,
    train_side_by_side,
    trains_on_cpu,
)
from test_interrupt_resume import saved_step, start_train_py
from test_sweeps import compose_with_hydra, job_summary, read_rows

POPULATION = ["hydra/launcher=population", "~callbacks.progress_bar"]
PROBE = """import atexit, runpy, sys
from pathlib import Path
heavy = [name for name in ("torch", "pytorch_lightning") if name in sys.modules]
assert not heavy, heavy  # a fresh interpreter
atexit.register(lambda: Path({record!r}).write_text(
    " ".join(name for name in ("torch", "pytorch_lightning") if name in sys.modules) or "neither"))
sys.argv[0] = {train!r}
runpy.run_path({train!r}, run_name="__main__")
"""
LRS = "optimizer.lr=0.01,0.02,0.05,0.1,0.2,0.5,1,100"


def sweep_config():
    """What a worker is started with: a sweep's config as Hydra composes it (its logging config, HydraConfig's)."""
    return compose_with_hydra("hydra.hydra_logging.root=null")  # 8 jobs, the last one diverges


@pytest.mark.parametrize(
    "setting, budget, members, on_cpu, expected",
    [
        ("auto", 2, 16, True, 2),  # the lecture sweep on two cores: 8 + 8
        ("auto", 2, 2 * MIN_MEMBERS - 1, True, 1),  # too few for two parts of MIN_MEMBERS
        ("auto", 2, 2 * MIN_MEMBERS, True, 2),
        ("auto", 1, 64, True, 1),  # threads=1: one process
        ("auto", 16, 16, True, 16 // MIN_MEMBERS),
        (3, 16, 64, True, 3),  # hydra.launcher.processes caps it
        (1, 16, 64, True, 1),
        ("auto", 16, 256, False, 1),  # a GPU: one process
    ],
)
def test_how_many_processes_a_group_trains_in(setting, budget, members, on_cpu, expected):
    assert process_count(setting, budget, members, on_cpu) == expected


@pytest.mark.parametrize("setting", [0, -2, "two", True, 1.5, None])
def test_a_bad_processes_setting_is_refused_in_one_line(setting):
    with pytest.raises(UserError, match="hydra.launcher.processes must be auto or a positive whole number"):
        process_count(setting, 2, 16, True)


@pytest.mark.slow
def test_train_py_refuses_a_bad_processes_setting_in_one_line_before_any_job(tmp_path):
    result = run_script(
        "train.py",
        "-m",
        *POPULATION,
        "hydra.launcher.processes=two",
        "optimizer.lr=0.1,0.2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: hydra.launcher.processes must be auto or a positive whole number, got 'two'"
    )
    assert not [p for p in (tmp_path / "sweep").iterdir() if p.is_dir()]


def test_parts_are_runs_of_consecutive_jobs_of_near_equal_size():
    parts = split(list(range(10)), 3)
    assert [len(p) for p in parts] == [4, 3, 3] and sum(parts, []) == list(range(10))
    assert split(list(range(16)), 2) == [list(range(8)), list(range(8, 16))]


def test_a_worker_trains_a_part_in_its_jobs_environment_and_restores_its_own(monkeypatch):
    """hydra.job.env_set: the parent trains under Hydra's env_override; a worker spawned before it gets the same."""
    monkeypatch.setenv("MAKEMORE_TEST_KEPT", "before")
    monkeypatch.delenv("MAKEMORE_TEST_NEW", raising=False)
    with environment({"MAKEMORE_TEST_KEPT": "job", "MAKEMORE_TEST_NEW": 3}):
        assert (os.environ["MAKEMORE_TEST_KEPT"], os.environ["MAKEMORE_TEST_NEW"]) == ("job", "3")
    assert os.environ["MAKEMORE_TEST_KEPT"] == "before" and "MAKEMORE_TEST_NEW" not in os.environ


@pytest.mark.slow
def test_a_worker_that_dies_fails_its_parts_members_and_is_not_given_another_part():
    workers = Workers(2, sweep_config())
    try:
        os.kill(workers.pids[0].result(timeout=60), signal.SIGKILL)
        dead = workers.answer(0, workers.submit(0, ["a", "b"], {}), ["a", "b"])
        alive = workers.answer(1, workers.submit(1, [], {}), [])  # the other worker's pool is not broken by it
        assert workers.alive() == [1] and len(workers) == 1
    finally:
        workers.close()
    assert len(dead) == 2 and all(isinstance(o, RuntimeError) for o in dead)
    assert "worker process ended before its members finished" in str(dead[0])
    assert alive == []


def test_a_part_left_without_a_live_worker_fails_its_members_and_the_other_parts_are_answered():
    """Two parts, one live worker: the first part (empty: nothing to train) is the worker's, the second fails."""
    workers = Workers(1, sweep_config())
    try:
        outcomes = train_side_by_side([[], ["a", "b"]], workers, lambda: "resume", {})
    finally:
        workers.close()
    assert len(outcomes) == 2 and all(isinstance(o, RuntimeError) for o in outcomes)
    assert "no worker process was left to train this member's part" in str(outcomes[0])


@pytest.mark.parametrize(
    "accelerator, cuda, on_cpu",
    [
        ("cpu", True, True),
        ("mps", True, True),  # an accelerator that allows no CUDA GPU
        ("auto", True, False),
        ("gpu", True, False),
        ("cuda", True, False),
        ("auto", False, True),
        ("gpu", False, True),  # no CUDA: the CPU
    ],
)
def test_a_population_trains_on_a_gpu_only_where_its_accelerator_allows_one_and_cuda_is_there(
    monkeypatch, accelerator, cuda, on_cpu
):
    """The launcher's answer (before torch is loaded) and the engine's device, on a CUDA build of torch."""
    import torch

    from makemore_lab.population import choose_device

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.13.0")  # not a "+cpu" build
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert trains_on_cpu(accelerator) is on_cpu
    device = choose_device(OmegaConf.create({"trainer": {"accelerator": accelerator}}))
    assert device.type == ("cpu" if on_cpu else "cuda")


@pytest.mark.skipif(not importlib.metadata.version("torch").endswith("+cpu"), reason="a CPU-only torch build")
def test_on_a_cpu_only_torch_the_launcher_knows_it_trains_on_the_cpu_without_importing_torch():
    probe = (
        "import sys; from makemore_lab.population.processes import trains_on_cpu; "
        "print(trains_on_cpu('auto'), trains_on_cpu('gpu'), 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "True", "False"]


def sweep_command(sweep_dir, small_names, *extra: str) -> list[str]:
    """8 tiny MLP jobs with threads=2: two parts of 4 on this CPU. Without the diagnostics and TensorBoard (each
    member's end-of-run figures and event files: the same code in a worker as in one process, tested there)."""
    return [
        "-m",
        *POPULATION,
        "model=mlp",
        "model.n_hidden=16",
        "trainer.accelerator=cpu",
        "threads=2",
        "num_samples=1",
        "~callbacks.diagnostics",
        "logger=none",
        f"data.path={small_names}",
        f"hydra.sweep.dir={sweep_dir}",
        *extra,
    ]


@pytest.mark.slow
def test_a_group_of_eight_trains_as_two_populations_in_two_processes_as_it_would_in_one(tmp_path, small_names):
    """threads=2 on this CPU: two parts of 4, one thread each; every member's numbers are those of the same sweep in
    one process (hydra.launcher.processes=1), the diverging member fails alone in the worker's part, and the table
    has every job."""
    steps = ["trainer.max_steps=60", "trainer.val_check_interval=30", LRS]
    # the side-by-side sweep in a fresh interpreter (not forked from the tests' pre-imported one), through a probe
    # that records what the launcher's own process imported by its exit
    imported = tmp_path / "launcher_imported.txt"
    probe = tmp_path / "launcher_probe.py"
    probe.write_text(PROBE.format(record=str(imported), train=str(ROOT / "train.py")))
    two = run_script(str(probe), *sweep_command(tmp_path / "two", small_names, *steps), python_flags=("-B",))
    one = run_script("train.py", *sweep_command(tmp_path / "one", small_names, *steps, "hydra.launcher.processes=1"))
    assert two.returncode == 0 and one.returncode == 0, (two.stderr + one.stderr)[-3000:]
    output = two.stdout + two.stderr
    assert re.search(
        r"job\(s\) 0,1,2,3,4,5,6,7: 2 populations side by side in 2 processes \(4 \+ 4 members\), "
        r"1 thread\(s\) each",
        output,
    )
    # every part trained in a worker: the launcher never imported torch or Lightning
    assert imported.read_text() == "neither"
    # the workers log through Hydra's handlers, with the member's prefix: Lightning added no console handler of its
    # own when the fork server imported it (population/worker_imports.py)
    seeded = [line for line in output.splitlines() if "Seed set to" in line]
    assert len(seeded) == 8 and all(re.search(r"\]\[HYDRA\] \[#\d\] Seed set to", line) for line in seeded), seeded
    assert "side by side" not in one.stdout + one.stderr
    assert "Traceback" not in output
    for job in map(str, range(7)):
        ours, theirs = job_summary(tmp_path / "two", job), job_summary(tmp_path / "one", job)
        assert (ours["population_size"], theirs["population_size"]) == (4, 8)
        for key in ("train_loss", "val_loss", "test_loss", "initial_loss"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-6), (job, key)
        assert (tmp_path / "two" / job / "checkpoints" / "last.ckpt").is_file()
    failure = json.loads((tmp_path / "two" / "7" / "failure.json").read_text())
    assert "training diverged" in failure["error"]
    rows = {r["job"]: r for r in read_rows(tmp_path / "two")}
    assert len(rows) == 8 and "diverged" in rows["7"]["error"] and not any(rows[str(j)]["error"] for j in range(7))


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, to_group, code, name",
    [
        (signal.SIGTERM, False, 143, "SIGTERM"),  # a scheduler's kill of the parent alone: the workers do not get it
        (signal.SIGINT, True, 130, "Ctrl-C"),  # the terminal's Ctrl-C reaches every process of the group
    ],
)
def test_a_signal_stops_every_part_saves_every_member_and_the_printed_command_resumes_them(
    tmp_path, small_names, signum, to_group, code, name
):
    sweep_dir = tmp_path / "sweep"
    args = sweep_command(
        sweep_dir,
        small_names,
        "trainer.max_steps=3000",
        "trainer.val_check_interval=3000",
        "callbacks.last_checkpoint.every_seconds=0.5",
        "optimizer.lr=0.01,0.02,0.05,0.1,0.2,0.5,1,2",
    )
    jobs = [str(j) for j in range(8)]
    proc = start_train_py(*args, saved=[sweep_dir / job for job in jobs], new_session=True)  # both parts saved
    if to_group:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr
    [line] = [line for line in stderr.splitlines() if "Resume with:" in line]
    assert line.startswith(f"error: {name}: 8 members in 2 processes stopped; every member's checkpoint saved.")
    stopped = {job: saved_step(sweep_dir / job / "checkpoints" / "last.ckpt") for job in jobs}
    assert all(0 < step < 3000 for step in stopped.values()) and not list(sweep_dir.glob("*/summary.json"))

    if to_group:  # the resume itself is the same command either way: run once, for SIGTERM
        return
    resume = line.split("Resume with: python train.py ", 1)[1]
    again = run_script("train.py", *shlex.split(resume))
    assert again.returncode == 0, again.stderr[-3000:]
    for job in jobs:
        summary = job_summary(sweep_dir, job)
        assert (summary["steps"], summary["resumed_from_step"]) == (3000, stopped[job])


def test_the_benchmark_times_the_one_process_layout_next_to_the_default():
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_population", ROOT / "scripts" / "benchmark_population.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    assert benchmark.launcher_overrides("population-one-process", 2, 2) == (
        ["hydra/launcher=population", "hydra.launcher.processes=1", "threads=2"],
        2,
    )
    assert benchmark.launcher_overrides("population", 2, 2) == (["hydra/launcher=population", "threads=2"], 2)
    # the start-up column: the first model's line, as a solo run and a population member log it
    started = datetime(2026, 12, 2, 16, 52, 50).timestamp()
    solo = (
        "[2026-12-02 16:52:53,634][lightning_fabric.utilities.seed][INFO] - Seed set to 42\n"
        "[2026-12-02 16:52:53,687][makemore_lab.train][INFO] - wavenet: 76,579 params, vocab 27, block_size 8\n"
    )
    member = (
        "[2026-12-02 16:52:58,123][HYDRA] Launching 16 jobs as populations\n"
        "[2026-12-02 16:53:04,053][HYDRA] [#0] wavenet: 76,579 params, vocab 27, block_size 8\n"
        "[2026-12-02 16:53:04,072][HYDRA] [#8] wavenet: 76,579 params, vocab 27, block_size 8\n"
    )
    assert benchmark.startup_seconds(solo, started) == pytest.approx(3.687, abs=1e-6)
    assert benchmark.startup_seconds(member, started) == pytest.approx(14.053, abs=1e-6)
    assert benchmark.startup_seconds("no model was built\n", started) is None


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_every_optuna_batch_under_threads_auto_trains_side_by_side(tmp_path, small_names):
    """Two batches of 8 trials (threads: auto, the default). The group registers once, as one run (threads.py): its
    workers counted as runs made the second batch's fair share 1 thread, one process. TMPDIR isolates the registry
    from the other tests' runs, and is long: past a Unix socket path's 108 bytes once multiprocessing adds its own
    names, as macOS's /var/folders/... or a cluster job's scratch dir can be (the fork server's socket must not
    depend on it)."""
    temp = tmp_path / ("a_long_temporary_directory_" * 3) / "tmp"
    temp.mkdir(parents=True)
    assert len(str(temp)) > 110
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(temp))
        mp.delenv("OMP_NUM_THREADS", raising=False)
        result = run_script(
            "train.py",
            "-m",
            "hparams_search=mlp_lr_population",
            "hydra.sweeper.n_trials=16",
            "trainer.max_steps=20",
            "trainer.val_check_interval=20",
            "trainer.accelerator=cpu",
            "~callbacks.progress_bar",
            "~callbacks.diagnostics",
            "logger=none",
            "num_samples=0",
            f"data.path={small_names}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fork server did not start" not in result.stdout + result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "side by side" in line]
    assert [line.split("] ", 1)[1] for line in lines] == [
        f"job(s) {','.join(map(str, jobs))}: 2 populations side by side in 2 processes (4 + 4 members), 1 thread(s) each"
        for jobs in (range(8), range(8, 16))
    ]


@pytest.mark.slow
def test_sigusr2_saves_every_member_and_ends_interrupted_not_failed(tmp_path, small_names):
    """SIGUSR2 (SLURM's warning before a time limit or a preemption) stops a population as a SIGTERM does; with no
    scheduler's handler to requeue it (not a SLURM job) the sweep ends interrupted (exit 140): every member saved,
    no failure.json, and the same command resumes it."""
    sweep_dir = tmp_path / "sweep"
    args = sweep_command(
        sweep_dir,
        small_names,
        "trainer.max_steps=3000",
        "trainer.val_check_interval=3000",
        "threads=1",
        "callbacks.last_checkpoint.every_seconds=0.5",
        "optimizer.lr=0.01,0.02",
    )
    proc = start_train_py(*args, saved=[sweep_dir / "0", sweep_dir / "1"])
    proc.send_signal(signal.SIGUSR2)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 140, stderr[-3000:]
    assert "Traceback" not in stderr
    [line] = [line for line in stderr.splitlines() if "Resume with:" in line]
    assert line.startswith("error: SIGUSR2 (time limit or preemption): population of 2 stopped at step ")
    assert "every member's checkpoint saved, not requeued" in line
    stopped = {job: saved_step(sweep_dir / job / "checkpoints" / "last.ckpt") for job in ("0", "1")}
    assert all(0 < step < 3000 for step in stopped.values())
    assert not list(sweep_dir.glob("*/failure.json")) and not list(sweep_dir.glob("*/summary.json"))
    again = run_script("train.py", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    for job in ("0", "1"):
        summary = job_summary(sweep_dir, job)
        assert (summary["steps"], summary["resumed_from_step"]) == (3000, stopped[job])
