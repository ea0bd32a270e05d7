"""Every printed command runs where the user is, as printed, in the form they typed: the installed console script
from an empty directory (makemore-train, on PATH as an installed user has it), the clone's script, or the API call
(tests/test_api.py). A sweep's resume command is the sweep itself into its own sweep dir, which resumes each job
the way it trains (sweep_policy.earlier_result), under the basic and the population launcher."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_script

BIN = Path(sys.executable).parent  # the venv's bin: makemore-train, makemore-sample, makemore-eval (editable install)
RESUME = re.compile(r"(?:Resume with|Continue the sweep with|continue it with): (.*)$")
# Long enough to be interrupted after its first checkpoint, short enough to finish when resumed.
STEPS = "trainer.max_steps=20000"
QUIET = [
    "trainer.accelerator=cpu",
    "threads=1",
    "num_samples=1",
    "~callbacks.diagnostics",
    "logger=none",
    "callbacks.last_checkpoint.every_seconds=0.3",
]


def installed_env() -> dict:
    """An installed user's environment: the package's console scripts on PATH."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def interrupt_when(proc: subprocess.Popen, ready: Path) -> str:
    """Ctrl-C once `ready` exists; the process's stderr."""
    while not ready.exists() and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    return stderr


def printed_command(stderr: str) -> str:
    [command] = [m[1] for line in stderr.splitlines() if (m := RESUME.search(line))]
    return command


def run_as_printed(command: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=installed_env(), capture_output=True, text=True, timeout=600
    )


def saved_step(ckpt: Path) -> int:
    return torch.load(ckpt, weights_only=True)["global_step"]


def summary(job_dir: Path) -> dict:
    return json.loads((job_dir / "summary.json").read_text())


@pytest.mark.slow
def test_ctrl_c_in_makemore_train_prints_a_makemore_train_command_that_runs_as_printed(tmp_path, small_names):
    workdir = tmp_path / "empty"
    workdir.mkdir()
    proc = subprocess.Popen(
        [str(BIN / "makemore-train"), "trainer.max_steps=10000000", f"data.path={small_names}", *QUIET],
        cwd=workdir,
        env=installed_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr = interrupt_when(proc, next_checkpoint(workdir / "logs" / "train" / "runs"))
    command = printed_command(stderr)
    [run_dir] = (workdir / "logs" / "train" / "runs").iterdir()
    step = saved_step(run_dir / "checkpoints" / "last.ckpt")
    assert command.startswith("makemore-train trainer.max_steps=10000000 ")
    assert f"hydra.run.dir={run_dir}" in command and f"ckpt_path={run_dir}/checkpoints/last.ckpt" in command

    # Started again without ckpt_path, the same run dir is refused with the same command (nothing written).
    again = subprocess.run(
        [
            str(BIN / "makemore-train"),
            "trainer.max_steps=10000000",
            f"data.path={small_names}",
            *QUIET,
            f"hydra.run.dir={run_dir}",
        ],
        cwd=workdir,
        env=installed_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 2 and f"continue it with: {command} (or choose another" in again.stderr

    resumed = run_as_printed(command.replace("trainer.max_steps=10000000", f"trainer.max_steps={step + 20}"), workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (summary(run_dir)["steps"], summary(run_dir)["resumed_from_step"]) == (step + 20, step)


def next_checkpoint(runs: Path):
    """A path-like that exists once any run under `runs` has saved its last.ckpt."""

    class AnyCheckpoint:
        def exists(self) -> bool:
            return bool(list(runs.glob("*/checkpoints/last.ckpt")))

    return AnyCheckpoint()


def test_the_clones_script_prints_a_python_script_command(tmp_path, small_names):
    """Refused into an interrupted run dir: the command it names is `python train.py ...` (the script as typed,
    relative to where the user is)."""
    run_dir = tmp_path / "run"
    first = run_script(
        "train.py", "trainer.max_steps=20", f"data.path={small_names}", *QUIET, f"hydra.run.dir={run_dir}"
    )
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir / "summary.json").unlink()  # what a kill leaves: last.ckpt, no summary.json
    refused = run_script(
        "train.py", "trainer.max_steps=20", f"data.path={small_names}", *QUIET, f"hydra.run.dir={run_dir}"
    )
    command = printed_command(refused.stderr)
    assert command.startswith("python train.py trainer.max_steps=20 ")  # run from the clone's root, as printed
    assert refused.returncode == 2
    elsewhere = run_script(
        "train.py", "trainer.max_steps=20", f"data.path={small_names}", *QUIET, f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert printed_command(elsewhere.stderr).startswith(f"python {ROOT / 'train.py'} trainer.max_steps=20 ")


def sweep(workdir: Path, sweep_dir: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "makemore-train"), "-m", STEPS, *QUIET, *overrides, f"hydra.sweep.dir={sweep_dir}"],
        cwd=workdir,
        env=installed_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def check_sweep_resumed(command: str, workdir: Path, sweep_dir: Path, jobs: int) -> dict[int, int | None]:
    """Run the printed sweep command as printed: every job finishes; each job's resumed_from_step."""
    assert command.startswith("makemore-train -m ") and "ckpt_path" not in command
    assert command.endswith(f"hydra.sweep.dir={sweep_dir}")
    stopped = {
        j: saved_step(sweep_dir / str(j) / "checkpoints" / "last.ckpt")
        for j in range(jobs)
        if (sweep_dir / str(j) / "checkpoints" / "last.ckpt").exists()
    }
    resumed = run_as_printed(command, workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list(sweep_dir.glob("*/failure.json"))
    summaries = {j: summary(sweep_dir / str(j)) for j in range(jobs)}
    assert all(s["steps"] == 20000 for s in summaries.values())
    for job, step in stopped.items():  # each interrupted job went on from its own checkpoint
        assert summaries[job]["resumed_from_step"] == step
    return {j: s.get("resumed_from_step") for j, s in summaries.items()}


@pytest.mark.slow
def test_an_interrupted_sweep_continues_with_its_printed_command(tmp_path, small_names):
    sweep_dir = tmp_path / "sweep"
    proc = sweep(tmp_path, sweep_dir, f"data.path={small_names}", "optimizer.lr=0.1,0.2")
    stderr = interrupt_when(proc, sweep_dir / "0" / "checkpoints" / "last.ckpt")
    resumed = check_sweep_resumed(printed_command(stderr), tmp_path, sweep_dir, 2)
    assert resumed[0] and resumed[1] is None  # job 1 never started: it trains from scratch, no checkpoint asked for


@pytest.mark.slow
def test_an_interrupted_population_sweep_continues_with_its_printed_command_unstarted_group_included(
    tmp_path, small_names
):
    """Two groups (n_hidden differs: two populations, one after the other), interrupted in the first: its members
    resume from their checkpoints, the group that never started trains from scratch."""
    sweep_dir = tmp_path / "sweep"
    proc = sweep(
        tmp_path,
        sweep_dir,
        f"data.path={small_names}",
        "hydra/launcher=population",
        "~callbacks.progress_bar",
        "model.n_hidden=8,16",
        "optimizer.lr=0.1,0.2",
    )
    stderr = interrupt_when(proc, sweep_dir / "1" / "checkpoints" / "last.ckpt")
    command = printed_command(stderr)
    assert "hydra/launcher=population" in command
    resumed = check_sweep_resumed(command, tmp_path, sweep_dir, 4)
    assert resumed[0] and resumed[1] and resumed[2] is None and resumed[3] is None


def test_a_sweep_dir_holding_another_sweep_names_its_command_as_typed(tmp_path, small_names):
    sweep_dir = tmp_path / "sweep"
    args = ["-m", "trainer.max_steps=20", f"data.path={small_names}", *QUIET, "optimizer.lr=0.1"]
    first = subprocess.run(
        [str(BIN / "makemore-train"), *args, f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path,
        env=installed_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    other = subprocess.run(
        [str(BIN / "makemore-train"), *args[:-1], "optimizer.lr=0.2", f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path,
        env=installed_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert other.returncode == 2
    theirs = shlex.join(["makemore-train", *args])
    assert f"holds another sweep ({theirs}): " in other.stderr
