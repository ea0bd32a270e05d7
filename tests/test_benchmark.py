"""scripts/benchmark.py runs end to end on tiny step counts (its numbers are never asserted: timings are noise here)."""

import json

import pytest

from conftest import run_script


def test_benchmark_table_has_a_row_per_model_and_diagnostics_mode(tmp_path, small_names):
    out = tmp_path / "rows.json"
    # few steps (100 timed after the script's 100 warm-up steps, in calls of 50: the rate needs two calls) and a
    # small file (each framework run ends with exact losses on every split, which the rates leave out)
    result = run_script("scripts/benchmark.py", "--models", "mlp", "transformer", "--steps", "100", "--repeats", "1",
                        "--json", str(out), "data.batch_size=8", f"data.path={small_names}", "steps_per_call=50")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["model"], r["diagnostics"]) for r in rows] == [
        ("mlp", "on"), ("mlp", "off"), ("transformer", "on"), ("transformer", "off"),
    ]
    for row in rows:
        assert row["device"] == "cpu" and row["steps"] == 100
        assert row["hand_steps_per_s"] > 0 and row["framework_steps_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["framework_steps_per_s"] / row["hand_steps_per_s"])
    table = [line for line in result.stdout.splitlines() if line.startswith("| mlp") or line.startswith("| transformer")]
    assert len(table) == 4
