"""scripts/benchmark_search.py end to end on tiny settings (the MLP, 4 members, 60 steps, the small names file): its
rows, and each method's best val loss, trials, pruned members and member-steps as its real sweep dirs' summary.json
files (and, for ASHA, its SQLite study) hold them. No timings are asserted: those are the benchmark's to report."""

import json
import math
import subprocess
import sys

import pytest

from conftest import ROOT

optuna = pytest.importorskip("optuna", reason="needs the optuna extra: pip install -e '.[optuna]'")
from optuna.trial import TrialState  # noqa: E402

SCRIPT = ROOT / "scripts" / "benchmark_search.py"
STEPS, MEMBERS = 60, 4


def benchmark(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def summaries(sweep_dir) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(sweep_dir.glob("*/summary.json"))]


@pytest.mark.slow
def test_each_methods_row_is_what_its_sweep_dirs_summaries_hold(tmp_path, small_names):
    out, report = tmp_path / "sweeps", tmp_path / "search.json"
    result = benchmark(
        *("--models", "mlp", "--steps", str(STEPS), "--members", str(MEMBERS), "--threads", "1"),
        *("--budget-seconds", "30", "--out", str(out), "--json", str(report)),
        f"data.path={small_names}",
        "num_samples=2",
        "model.n_hidden=50",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["method"]: row for row in json.loads(report.read_text())["runs"][-1]["rows"]}
    assert list(rows) == ["grid", "asha", "pbt", "tpe"]
    assert "| model | method | wall time (s) | best val loss | trials (pruned) | member-steps |" in result.stdout
    measured = [m for m in rows if "seconds" in rows[m]]
    assert {"grid", "asha", "tpe"} <= set(measured)  # pbt too once configs/pbt/default.yaml exists
    for method in measured:
        row, jobs = rows[method], summaries(tmp_path / "sweeps" / f"mlp-{method}-seed0")
        complete = [job["val_loss"] for job in jobs if "pruned" not in job and math.isfinite(job["val_loss"])]
        assert row["best_val_loss"] == min(complete), method
        assert row["trials"] == len(jobs) and row["member_steps"] == sum(job["steps"] for job in jobs)
        assert row["pruned"] == sum("pruned" in job for job in jobs)
        assert f"| mlp | {method} |" in result.stdout and f"{row['best_val_loss']:.4f}" in result.stdout
    # the grid and PBT: one population of every point, every member trained every step
    for method in {"grid", "pbt"} & set(measured):
        assert rows[method]["trials"] == MEMBERS and rows[method]["member_steps"] == MEMBERS * STEPS
        assert all(job["population_size"] == MEMBERS for job in summaries(out / f"mlp-{method}-seed0"))
    # ASHA: one population of its trials, the losers pruned at a rung, PRUNED in the study in its sweep dir
    asha_dir = out / "mlp-asha-seed0"
    study = optuna.load_study(study_name="mlp_asha", storage=f"sqlite:///{asha_dir / 'optuna.db'}")
    assert len(study.trials) == rows["asha"]["trials"] == MEMBERS
    assert rows["asha"]["pruned"] == sum(t.state == TrialState.PRUNED for t in study.trials) >= 1
    assert rows["asha"]["member_steps"] < MEMBERS * STEPS
    # TPE: trials one after another until the budget stopped it; what finished counts
    assert rows["tpe"]["stopped_at_budget"] and rows["tpe"]["trials"] >= 1
    assert all("population_size" not in job for job in summaries(out / "mlp-tpe-seed0"))


@pytest.mark.parametrize(
    "args, line",
    [
        (["--members", "1"], "error: --members >= 2"),
        (["--methods", "tpe"], "error: tpe's budget is the grid's wall time"),
    ],
)
def test_bad_settings_are_one_line(tmp_path, args, line):
    result = benchmark(*args, "--out", str(tmp_path / "sweeps"))
    assert result.returncode != 0 and result.stderr.strip().startswith(line), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "sweeps").exists()
