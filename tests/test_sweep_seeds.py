"""A sweep over seeds: jobs that differ only in `seed` / `data.seed` are one row of the sweep's table (mean ± standard
deviation over the finished seeds, and n), first in summary.md and on the console, after the per-job rows in
summary.csv; a real multirun through train.py, and the rules on job dirs written as jobs write them."""

import json
import statistics
from pathlib import Path

import pytest

from conftest import TINY, run_script
from makemore_lab import sweep_summary
from test_sweeps import read_rows


def write_job(sweep_dir: Path, job: str, overrides: list[str], val_loss: float | None, error: str | None = None):
    """A job dir as a finished (or failed) job leaves it: .hydra/overrides.yaml, summary.json or failure.json."""
    (sweep_dir / job / ".hydra").mkdir(parents=True)
    (sweep_dir / job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if error:
        (sweep_dir / job / "failure.json").write_text(json.dumps({"error": error}))
    else:
        summary = {
            "overrides": overrides,
            "params": 100,
            "steps": 20,
            "train_loss": val_loss - 0.1,
            "val_loss": val_loss,
            "test_loss": val_loss + 0.1,
            "train_seconds": 1.0,
        }
        (sweep_dir / job / "summary.json").write_text(json.dumps(summary))


@pytest.mark.slow
def test_a_sweep_over_three_seeds_is_one_row_per_config_with_its_spread(tmp_path, small_names):
    sweep_dir = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "optimizer.lr=0.1,0.3",
        "seed=1,2,3",
        *TINY,
        "~callbacks.diagnostics",
        f"data.path={small_names}",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_rows(sweep_dir)
    jobs, seeds = [r for r in rows if r["n"] == "1"], [r for r in rows if r["n"] != "1"]
    assert len(jobs) == 6 and len(seeds) == 2
    for seed_row in seeds:
        mine = [r for r in jobs if r["optimizer.lr"] == seed_row["optimizer.lr"]]
        assert sorted(r["job"] for r in mine) == sorted(seed_row["job"].split(",")) and seed_row["seed"] == ""
        assert seed_row["n"] == "3"
        for loss in ("train_loss", "val_loss", "test_loss"):
            values = [float(r[loss]) for r in mine]
            assert float(seed_row[loss]) == pytest.approx(statistics.fmean(values), rel=1e-12)
            assert float(seed_row[f"{loss}_std"]) == pytest.approx(statistics.stdev(values), rel=1e-12)
    assert float(seeds[0]["val_loss"]) <= float(seeds[1]["val_loss"])  # best mean first
    # summary.md and the console: the seeds' table first, one row per lr; the console prints that one
    table = sweep_summary.first_table((sweep_dir / "summary.md").read_text())
    assert table[0].startswith("| jobs | optimizer.lr | n | train_loss | val_loss |") and len(table) == 4
    best = seeds[0]
    assert f"| {best['job']} | {best['optimizer.lr']} | 3 | " in table[2] and " ± " in table[2]
    assert "\n".join(table) in result.stdout and "(over seeds; each job's own row: summary.md)" in result.stdout
    assert "| job | optimizer.lr | seed |" in (sweep_dir / "summary.md").read_text()  # each job's row, below


def test_without_seeds_the_table_is_the_jobs_alone(tmp_path):
    for job, lr in enumerate(("0.1", "0.3")):
        write_job(tmp_path, str(job), [f"optimizer.lr={lr}"], 2.5 + job)
    sweep_summary.write_summary(tmp_path)
    assert "Over seeds" not in (tmp_path / "summary.md").read_text()
    assert "n" not in read_rows(tmp_path)[0] and len(read_rows(tmp_path)) == 2


def test_data_seed_counts_as_a_seed_and_failed_seeds_are_left_out_and_counted(tmp_path):
    write_job(tmp_path, "0", ["optimizer.lr=0.1", "seed=1", "data.seed=5"], 2.5)
    write_job(tmp_path, "1", ["optimizer.lr=0.1", "seed=2", "data.seed=6"], 2.7)
    write_job(tmp_path, "2", ["optimizer.lr=0.1", "seed=3", "data.seed=7"], None, error="training diverged")
    write_job(tmp_path, "3", ["optimizer.lr=0.3", "seed=1", "data.seed=5"], 2.4)  # one seed: no seed row
    sweep_summary.write_summary(tmp_path)
    [seed_row] = [r for r in read_rows(tmp_path) if r["n"] != "1"]
    assert (seed_row["job"], seed_row["seed"], seed_row["data.seed"], seed_row["n"]) == ("0,1,2", "", "", "2")
    assert float(seed_row["val_loss"]) == pytest.approx(2.6)
    assert float(seed_row["val_loss_std"]) == pytest.approx(statistics.stdev([2.5, 2.7]))
    assert seed_row["error"] == "1 of 3 seeds failed or unfinished"
    text = (tmp_path / "summary.md").read_text()
    assert "Over seeds (seed, data.seed)" in text and "| 0,1,2 | 0.1 | 2 | " in text
