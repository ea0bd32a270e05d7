"""Sweeps on a real SLURM cluster: scripts/slurm_cluster.sh starts one on this machine (as root: Debian's slurm-wlm,
slurmdbd with MariaDB, munge) and these tests submit to it through hydra/launcher=slurm_cpu, as a user would.

Covered: the shipped sweep command; a failed job's row; a job requeued mid-run (scontrol requeue) ends at the same
losses as one left alone; preemption by a higher partition requeues and resumes; scancel, then the sweep's rerun
resumes the job; a time limit's SIGUSR2: the job saves its step, is requeued and resumes, and is left unfinished
(not failed) once max_num_timeout is spent; trainer=ddp with 2 ranks as one SLURM job equals
the local DDP run. Where the cluster cannot be started (not root, no apt-get) they are skipped with the reason.
"""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_script
from makemore_lab import ranks
from test_interrupt_resume import saved_step
from test_sweeps import job_summary, read_rows

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "scripts" / "slurm_cluster.sh"
# A bigram run long enough to be interrupted after its first validation (step 1000), short enough to finish in
# seconds: steps_per_call=200 steps a batch, so interruptions land on a multiple of 200.
LONG = ["model=bigram", "trainer.max_steps=8000", "trainer.val_check_interval=1000", "threads=1"]
FIRST_VALIDATION = "step 1000/"
WAIT_S = 240  # for a job to reach a point; a cluster that takes longer is broken, not slow


def slurm(test):
    """A test that submits to the cluster: marked slurm, and slow (real training runs)."""
    return pytest.mark.slow(pytest.mark.slurm(test))


@pytest.fixture(scope="module")
def cluster():
    """The cluster, started by the script (installing it first where needed); stopped after the tests if they
    started it. Skipped, with the reason, where it cannot be started."""
    if os.geteuid() != 0:
        pytest.skip("a SLURM cluster needs root (scripts/slurm_cluster.sh installs and starts its daemons)")
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        pytest.skip("no SLURM and no apt-get to install it (scripts/slurm_cluster.sh installs Debian's packages)")
    start = subprocess.run([str(CLUSTER), "start"], capture_output=True, text=True, timeout=900)
    if start.returncode in (2, 3):  # not root, cannot install
        pytest.skip(f"SLURM cannot be started here: {(start.stderr or start.stdout).strip()}")
    assert start.returncode == 0, f"scripts/slurm_cluster.sh start failed:\n{start.stdout}\n{start.stderr}"
    yield
    if "already running" not in start.stdout:
        subprocess.run([str(CLUSTER), "stop"], capture_output=True, timeout=120)


def sweep(cwd: Path, *overrides: str) -> subprocess.Popen:
    """`python train.py -m hydra/launcher=slurm_cpu <overrides>` in cwd, started (not waited for)."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=slurm_cpu", *overrides],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: int = 600) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def wait_for(path: Path, text: str, what: str, after: str = "") -> None:
    """Until `text` is in the file (after the first `after` in it)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        content = path.read_text(errors="replace") if path.is_file() else ""
        if after in content and text in content[content.index(after) :]:
            return
        time.sleep(0.2)
    pytest.fail(f"{what}: {text!r} never appeared in {path}")


def slurm_job_id(sweep_dir: Path, job: int) -> str:
    """The SLURM id of a sweep's running job: submitit's folder for it, <array id>_<job> (a sweep of one job is
    not an array: <job id>)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        folders = [p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir()]
        found = [name for name in folders if name.endswith(f"_{job}")] or [name for name in folders if name.isdigit()]
        if found:
            return found[0]
        time.sleep(0.2)
    pytest.fail(f"no submitit folder for job {job} in {sweep_dir}")


def table(sweep_dir: Path) -> dict[str, dict]:
    with (sweep_dir / "summary.csv").open() as f:
        return {row["job"]: row for row in csv.DictReader(f)}


def summary(job_dir: Path) -> dict:
    return json.loads((job_dir / "summary.json").read_text())


def test_rank_zero_is_read_from_every_launcher(monkeypatch):
    """Lightning's DDP launcher (LOCAL_RANK), torchrun (RANK) and SLURM (SLURM_PROCID, SLURM_LOCALID) alike."""
    for name in ranks.RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert ranks.is_rank_zero()
    for name in ranks.RANK_VARIABLES:
        monkeypatch.setenv(name, "0")
        assert ranks.is_rank_zero()
        monkeypatch.setenv(name, "1")
        assert not ranks.is_rank_zero(), name
        monkeypatch.setenv(name, "0")


@pytest.mark.slurm
def test_the_cluster_script_is_idempotent_and_knows_its_daemons(cluster):
    """`start` on a running cluster starts nothing; `status` names each daemon it started by PID."""
    again = subprocess.run([str(CLUSTER), "start"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr
    status = subprocess.run([str(CLUSTER), "status"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    for daemon in ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd"):
        assert f"{daemon}: running (" in status.stdout
    assert "batch*" in status.stdout and "urgent" in status.stdout  # sinfo: the two partitions, batch the default


@slurm
def test_the_shipped_sweep_runs_and_a_failing_job_is_a_failed_row(cluster, tmp_path):
    shipped, failing = tmp_path / "shipped", tmp_path / "failing"
    shipped.mkdir()
    a = sweep(shipped, "model=bigram,mlp", "debug=fast")  # exactly the documented command, in its own dir
    b = sweep(tmp_path, "model=mlp", "debug=fast", "max_params=1000", f"hydra.sweep.dir={failing}")
    (code_a, out_a, err_a), (code_b, out_b, err_b) = finish(a), finish(b)
    assert code_a == 0, err_a
    (sweep_dir,) = (shipped / "logs" / "train" / "multiruns").iterdir()
    rows = table(sweep_dir)
    assert {rows[j]["model"] for j in "01"} == {"bigram", "mlp"} and not any(r["error"] for r in rows.values())
    assert all((sweep_dir / j / "summary.json").is_file() for j in "01")
    tasks = [p.name.split("_") for p in (sweep_dir / ".submitit").glob("*_*") if p.is_dir()]
    assert len({array for array, _ in tasks}) == 1 and sorted(job for _, job in tasks) == ["0", "1"]  # one array
    assert "| mlp |" in out_a and "| bigram |" in out_a  # the table, on the console

    assert code_b == 0, err_b
    row = table(failing)["0"]
    assert "more than max_params=1,000" in row["error"] and row["val_loss"] == ""
    assert json.loads((failing / "0" / "failure.json").read_text())["error"] == row["error"]
    assert "| failed |" in out_b and "more than max_params=1,000" in out_b


@slurm
def test_a_requeued_job_resumes_to_the_uninterrupted_result(cluster, tmp_path):
    """Two identical jobs: 0 runs alone, 1 is requeued by `scontrol requeue` mid-run (SLURM sends SIGTERM: the job
    saves its step and exits; its requeued run resumes there). Both end at the same losses, and the table times
    job 1 over both of its runs."""
    sweep_dir = tmp_path / "sweep"
    process = sweep(tmp_path, *LONG, "seed=1,1", f"hydra.sweep.dir={sweep_dir}")
    wait_for(sweep_dir / "1" / "train.log", FIRST_VALIDATION, "job 1 training")
    subprocess.run(["scontrol", "requeue", slurm_job_id(sweep_dir, 1)], check=True)
    code, out, err = finish(process)
    assert code == 0, err
    alone, requeued = summary(sweep_dir / "0"), summary(sweep_dir / "1")
    assert (requeued["val_loss"], requeued["test_loss"]) == (alone["val_loss"], alone["test_loss"])
    assert "resuming from" in (sweep_dir / "1" / "train.log").read_text()
    (interrupted,) = json.loads((sweep_dir / "1" / "segments.json").read_text())
    assert interrupted["steps"] == requeued["resumed_from_step"] > 0
    row = table(sweep_dir)["1"]  # the table's time: every fit of the job, not the last one alone
    assert float(row["time_s"]) == pytest.approx(requeued["train_seconds"] + interrupted["seconds"])


@slurm
def test_a_preempted_then_cancelled_job_resumes_each_time(cluster, tmp_path):
    """A job in the `urgent` partition that needs every CPU preempts the running sweep job (PreemptMode=REQUEUE):
    the sweep job saves its step, is requeued, and resumes after the urgent job. Then scancel: the job saves its
    step again, the sweep ends with one line naming the cancelled job, and running the same sweep again resumes it
    to the end."""
    sweep_dir = tmp_path / "sweep"
    overrides = [*LONG, f"hydra.sweep.dir={sweep_dir}"]
    process = sweep(tmp_path, *overrides)
    log = sweep_dir / "0" / "train.log"
    wait_for(log, FIRST_VALIDATION, "the sweep's job training")
    subprocess.run(
        [
            "sbatch",
            "--partition=urgent",
            f"--cpus-per-task={os.cpu_count()}",
            "--mem=100M",
            f"--output={tmp_path / 'urgent.out'}",
            "--wrap=true",
        ],
        check=True,
        capture_output=True,
    )
    wait_for(log, "/8000: train/loss", "the preempted job training again", after="resuming from")
    subprocess.run(["scancel", slurm_job_id(sweep_dir, 0)], check=True)
    code, out, err = finish(process)
    assert code != 0 and "CANCELLED" in err and len(err.strip().splitlines()) == 1, err  # one line, no traceback
    assert (sweep_dir / "0" / "checkpoints" / "last.ckpt").is_file() and not (sweep_dir / "0" / "failure.json").exists()

    code, out, err = finish(sweep(tmp_path, *overrides))  # the same sweep again: the job resumes
    assert code == 0, err
    text = log.read_text()
    assert text.count("Received SIGTERM") >= 2 and text.count("resuming from") == 2
    preempted, cancelled = json.loads((sweep_dir / "0" / "segments.json").read_text())
    assert cancelled["resumed_from_step"] == preempted["steps"] > 0
    result = summary(sweep_dir / "0")
    assert result["resumed_from_step"] == preempted["steps"] + cancelled["steps"] and result["steps"] == 8000
    assert table(sweep_dir)["0"]["error"] == ""


@slurm
def test_a_time_limit_requeues_the_job_then_leaves_it_unfinished_not_failed(cluster, tmp_path):
    """A time limit's warning (SIGUSR2, sent here as SLURM sends it, `scancel --signal=USR2`, once training is
    under way; SLURM's own comes on a 30 s tick that can land before a loaded machine has started training) to a
    job with timeout_min=1: the job stops at its current step, saves, and submitit requeues it (max_num_timeout=1);
    its second run resumes there, is stopped the same way and left unfinished: no failure.json, the sweep ends
    (exit 0) with the job's row empty, and its rerun would resume it."""
    sweep_dir = tmp_path / "sweep"
    process = sweep(
        tmp_path,
        "model=bigram",
        "trainer.max_steps=10000000",
        "trainer.val_check_interval=1000",
        "threads=1",
        "hydra.launcher.timeout_min=1",
        "hydra.launcher.signal_delay_s=1",
        "hydra.launcher.max_num_timeout=1",
        f"hydra.sweep.dir={sweep_dir}",
    )
    job_dir = sweep_dir / "0"
    wait_for(job_dir / "train.log", FIRST_VALIDATION, "the job training")
    subprocess.run(["scancel", "--signal=USR2", slurm_job_id(sweep_dir, 0)], check=True)
    wait_for(job_dir / "train.log", "/10000000: train/loss", "the requeued job training", after="resuming from")
    subprocess.run(["scancel", "--signal=USR2", slurm_job_id(sweep_dir, 0)], check=True)
    code, out, err = finish(process)
    assert code == 0, err
    log = (job_dir / "train.log").read_text()
    first, second = json.loads((job_dir / "segments.json").read_text())
    assert second["resumed_from_step"] == first["steps"] > 0 and second["steps"] > 0
    assert not (job_dir / "failure.json").exists() and not (job_dir / "summary.json").exists()
    assert (job_dir / "checkpoints" / "last.ckpt").is_file()
    assert log.count("SIGUSR2 (a time limit or preemption is near)") == 2 and "Requeued job" in log
    assert "job 0 interrupted: SIGUSR2" in log and "timed-out too many times" in log
    stderr = "".join(p.read_text() for p in (sweep_dir / ".submitit").rglob("*_log.err"))
    assert "reentrant" not in stderr and "Traceback" not in stderr  # nothing logged from inside a signal handler
    row = table(sweep_dir)["0"]
    assert row["error"] == "" and row["val_loss"] == ""  # unfinished, not failed


@slurm
def test_ddp_with_two_ranks_as_a_slurm_job_equals_the_local_ddp_run(cluster, tmp_path):
    """trainer=ddp trainer.devices=2: two SLURM tasks (gloo ranks) that Lightning joins; rank 1 claims nothing
    (ranks.py), rank 0 writes the run's files, and the run ends where the same run under Lightning's own DDP
    launcher on this machine ends."""
    sweep_dir, local_dir = tmp_path / "sweep", tmp_path / "local"
    ddp = ["trainer=ddp", "trainer.devices=2", "model=mlp", "debug=fast", "threads=1"]
    process = sweep(tmp_path, *ddp, f"hydra.sweep.dir={sweep_dir}")
    local = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *ddp, f"hydra.run.dir={local_dir}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    code, out, err = finish(process)
    assert code == 0 and local.returncode == 0, err + local.stderr
    on_slurm, here = summary(sweep_dir / "0"), summary(local_dir)
    assert (on_slurm["val_loss"], on_slurm["test_loss"]) == (here["val_loss"], here["test_loss"])
    (rank1_log,) = (sweep_dir / ".submitit").rglob("*_1_log.out")  # the job's second task
    rank1 = rank1_log.read_text()
    assert "global_rank=1(2)" in rank1 and "refused" not in rank1 and "in use" not in rank1
    assert table(sweep_dir)["0"]["error"] == ""


# ---------------------------------------------------------------------------------------------------------------------
# Populations: hydra/launcher=population_slurm, each group of a sweep one SLURM job.

SLURM_POPULATION = [
    "hydra/launcher=population_slurm",
    "hydra.launcher.submitit.cpus_per_task=1",
    "hydra.launcher.submitit.mem_gb=2",
]
COMMON = [
    "model=mlp",
    "model.n_hidden=16",
    "~callbacks.progress_bar",
    "~callbacks.diagnostics",
    "logger=none",
    "threads=1",
    "trainer.accelerator=cpu",
    "num_samples=1",
]


def wait_until_true(condition, proc, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended before {what}: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@slurm
def test_a_requeued_population_group_resumes_every_member_as_if_uninterrupted(cluster, tmp_path, small_names):
    steps = [
        "trainer.max_steps=3000",
        "trainer.val_check_interval=1500",
        "callbacks.last_checkpoint.every_seconds=0.5",
        "optimizer.lr=0.05,0.1",
        f"data.path={small_names}",
    ]
    sweep_dir = tmp_path / "slurm"
    log = tmp_path / "launcher.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "train.py"),
                "-m",
                *SLURM_POPULATION,
                *COMMON,
                *steps,
                f"hydra.sweep.dir={sweep_dir}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
        )
        checkpoints = [sweep_dir / job / "checkpoints" / "last.ckpt" for job in ("0", "1")]
        wait_until_true(lambda: all(c.is_file() for c in checkpoints), proc, 300, "both members saved")
        [job_id] = re.findall(r"job\(s\) 0,1: slurm job (\d+)", log.read_text())
        subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True)
        assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    local = run_script(
        "train.py", "-m", "hydra/launcher=population", *COMMON, *steps, f"hydra.sweep.dir={tmp_path / 'local'}"
    )
    assert local.returncode == 0, local.stderr[-3000:]
    for job in ("0", "1"):
        requeued, uninterrupted = job_summary(sweep_dir, job), job_summary(tmp_path / "local", job)
        assert requeued["steps"] == 3000 and 0 < requeued["resumed_from_step"] < 3000
        for key in ("train_loss", "val_loss", "test_loss"):
            assert requeued[key] == pytest.approx(uninterrupted[key], abs=1e-6), (job, key)
    assert len(read_rows(sweep_dir)) == 2 and not list(sweep_dir.glob("*/failure.json"))


def population_sweep(tmp_path, *overrides):
    """The sweep, as a user starts it, in the background; its console in launcher.log."""
    log = tmp_path / "launcher.log"
    out = log.open("w")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "-m", *SLURM_POPULATION, *COMMON, *overrides],
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    return proc, log


def group_job_id(proc, log: Path, sweep_dir: Path) -> str:
    """The SLURM job of the sweep's one group, once both members have saved a checkpoint."""
    checkpoints = [sweep_dir / job / "checkpoints" / "last.ckpt" for job in ("0", "1")]
    wait_until_true(lambda: all(c.is_file() for c in checkpoints), proc, 300, "both members saved")
    [job_id] = re.findall(r"job\(s\) 0,1: slurm job (\d+)", log.read_text())
    return job_id


@slurm
def test_a_population_group_warned_by_sigusr2_saves_every_member_is_requeued_and_resumes(
    cluster, tmp_path, small_names
):
    """SIGUSR2, as SLURM sends it signal_delay_s before a time limit or a preemption (here by scancel, at once):
    every member saves at its step, submitit's handler requeues the group's job, and its next run resumes them."""
    sweep_dir = tmp_path / "slurm"
    proc, log = population_sweep(
        tmp_path,
        "trainer.max_steps=30000",
        "trainer.val_check_interval=15000",
        "callbacks.last_checkpoint.every_seconds=0.5",
        "optimizer.lr=0.05,0.1",
        f"data.path={small_names}",
        f"hydra.sweep.dir={sweep_dir}",
    )
    job_id = group_job_id(proc, log, sweep_dir)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, capture_output=True)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    for job in ("0", "1"):
        summary = job_summary(sweep_dir, job)
        assert summary["steps"] == 30000 and 0 < summary["resumed_from_step"] < 30000
    logs = "".join(p.read_text() for p in (sweep_dir / ".submitit" / job_id).glob("*_log.*"))
    assert "every member's checkpoint saved; handing over to the scheduler" in logs and "Traceback" not in logs
    assert not list(sweep_dir.glob("*/failure.json"))


@slurm
def test_a_cancelled_population_group_ends_the_sweep_in_one_line_and_the_same_command_resumes_it(
    cluster, tmp_path, small_names
):
    sweep_dir = tmp_path / "slurm"
    overrides = [
        "trainer.max_steps=30000",
        "trainer.val_check_interval=15000",
        "callbacks.last_checkpoint.every_seconds=0.5",
        "optimizer.lr=0.05,0.1",
        f"data.path={small_names}",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    proc, log = population_sweep(tmp_path, *overrides)
    job_id = group_job_id(proc, log, sweep_dir)
    subprocess.run(["scancel", job_id], check=True, capture_output=True)
    assert proc.wait(timeout=300) == 130, log.read_text()[-3000:]
    [line] = [line for line in log.read_text().splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: SLURM job(s) ended without a result: {job_id} (job(s) 0,1): ")
    assert "CANCELLED" in line and "last checkpoints are kept; continue the sweep with: " in line
    stopped = {job: saved_step(sweep_dir / job / "checkpoints" / "last.ckpt") for job in ("0", "1")}
    assert not list(sweep_dir.glob("*/failure.json")) and not list(sweep_dir.glob("*/summary.json"))
    again = run_script("train.py", "-m", *SLURM_POPULATION, *COMMON, *overrides, cwd=tmp_path, timeout=600)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    for job in ("0", "1"):
        summary = job_summary(sweep_dir, job)
        assert summary["steps"] == 30000 and summary["resumed_from_step"] == stopped[job] > 0
