"""What a user sees when the output is piped (a log file, CI, a notebook): `python train.py > log 2>&1` and
`python train.py -m ... > log 2>&1`, read back as a user reads them (README, "What a run prints")."""

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY

pytestmark = pytest.mark.slow

LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]\[[\w.]+\](\[\w+\])? - ")
NOISE = [
    "FLOPs",
    "srun",
    "Tip:",
    "TPU available",
    "validation will run after every batch",
    "Trainer.fit` stopped",
    "LeafSpec",
    "detect_anomaly",
]


def piped(tmp_path: Path, *args: str) -> str:
    """train.py's stdout and stderr in one pipe, on a machine where SLURM's `srun` is installed (Lightning's hint)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    srun = bin_dir / "srun"
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=tmp_path,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    (tmp_path / "console.txt").write_text(done.stdout)
    return done.stdout


def assert_plain(output: str) -> None:
    """No terminal control codes, no third-party noise, no line where a log line starts mid-way (a collision)."""
    assert "\x1b" not in output and "\r" not in output
    assert [word for word in NOISE if word in output] == []
    for line in output.splitlines():
        assert len(re.findall(r"\[\d{4}-\d\d-\d\d \d\d:", line)) <= 1 and (
            "[20" not in line[1:] or LOG_LINE.match(line)
        ), line


def test_a_piped_run_prints_progress_lines_a_wrapped_health_report_and_samples(tmp_path, small_names):
    output = piped(tmp_path, *TINY, f"data.path={small_names}", "callbacks.diagnostics.every_n_steps=5")
    assert_plain(output)
    lines = output.splitlines()
    progress = [line.split(" - ", 1)[1] for line in lines if "step_progress_bar" in line]
    assert [p.split(":")[0] for p in progress] == ["step 10/20", "step 20/20"]  # one per validation, true counts
    assert all("train/loss" in p and "val/loss" in p for p in progress)
    report = lines[lines.index("training health (lecture 3's rules of thumb):") :]
    verdict = next(line for line in report if line.startswith("  verdict: "))
    # one tanh layer: the depth rules cannot be judged, and the verdict says so instead of "healthy"
    assert re.fullmatch(r"  verdict: no rule broken, \d of \d checked \(not checked: .*activation_std.*\)", verdict)
    assert max(len(line) for line in report[: report.index(verdict)]) <= 110  # why: wrapped
    assert lines[lines.index("samples:") + 1 :][:3] == [line for line in lines if line.startswith("  ")][-3:]
    train_log = next(tmp_path.glob("logs/train/runs/*/train.log")).read_text()
    assert "training health" in train_log and "verdict:" in train_log  # the report is kept with the run


def test_debug_fast_counts_its_steps(tmp_path, small_names):
    output = piped(tmp_path, "debug=fast", f"data.path={small_names}", "threads=1")
    assert_plain(output)
    assert [line.split(" - ", 1)[1].split(":")[0] for line in output.splitlines() if "step_progress_bar" in line] == [
        "step 10/20",
        "step 20/20",
    ]


def assert_one_table_of_verdicts(output: str, tmp_path: Path, jobs: int) -> None:
    table = [line for line in output.splitlines() if line.startswith("|")]
    assert table[0].endswith("| time (s) | health | failed |") and len(table) == 2 + jobs
    assert all(re.search(r"\| ok \(\d/\d checked\) \|", row) for row in table[2:])  # each job's verdict
    logs = sorted(tmp_path.glob("logs/train/multiruns/*/*/train.log"))
    assert len(logs) == jobs
    for log in logs:  # each job's full report is in its train.log
        text = log.read_text()
        assert "training health" in text and "verdict:" in text and "samples:" in text


def test_a_sweep_prints_one_line_per_job_and_one_table(tmp_path, small_names):
    output = piped(tmp_path, "-m", *TINY, f"data.path={small_names}", "optimizer.lr=0.05,0.2")
    assert_plain(output)
    assert "training health" not in output and "samples:" not in output  # the reports are in each train.log
    job_lines = [line for line in output.splitlines() if " health: " in line]
    assert len(job_lines) == 2 and all(
        re.search(r"val \d\.\d{4}  test \d\.\d{4}  health: ok", line) for line in job_lines
    )
    assert_one_table_of_verdicts(output, tmp_path, jobs=2)


@pytest.fixture(scope="module")
def population_output(tmp_path_factory, small_names) -> tuple[str, Path]:
    tmp_path = tmp_path_factory.mktemp("population")
    return piped(
        tmp_path, "-m", "hydra/launcher=population", *TINY, f"data.path={small_names}", "optimizer.lr=0.05,0.1,0.2"
    ), tmp_path


def test_a_population_sweep_ends_in_one_table_of_verdicts(population_output):
    output, tmp_path = population_output
    assert_plain(output)
    assert_one_table_of_verdicts(output, tmp_path, jobs=3)


def test_a_population_sweep_prints_one_line_per_job_not_its_report(population_output):
    output, _ = population_output
    assert "training health" not in output and "samples:" not in output
    job_lines = [line for line in output.splitlines() if " health: " in line]
    assert sorted(line.split("] [")[1][:2] for line in job_lines) == ["#0", "#1", "#2"]
