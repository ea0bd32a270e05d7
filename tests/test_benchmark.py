"""scripts/benchmark.py runs end to end on tiny step counts (its numbers are never asserted: timings are noise here)."""

import json

import pytest

from conftest import run_script


def test_benchmark_table_has_a_row_per_model_and_diagnostics_mode(tmp_path):
    out = tmp_path / "rows.json"
    result = run_script("scripts/benchmark.py", "--models", "mlp", "transformer", "--steps", "400", "--repeats", "1",
                        "--json", str(out), "data.batch_size=8")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["model"], r["diagnostics"]) for r in rows] == [
        ("mlp", "on"), ("mlp", "off"), ("transformer", "on"), ("transformer", "off"),
    ]
    for row in rows:
        assert row["device"] == "cpu" and row["steps"] == 400
        assert row["hand_steps_per_s"] > 0 and row["framework_steps_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["framework_steps_per_s"] / row["hand_steps_per_s"])
    table = [line for line in result.stdout.splitlines() if line.startswith("| mlp") or line.startswith("| transformer")]
    assert len(table) == 4
