"""scripts/reproduce.py end to end on one preset with a tiny step count: both files it writes, read back."""

import json

import pytest

from conftest import run_script


@pytest.mark.slow
def test_reproduce_one_preset_writes_results_md_and_json(tmp_path):
    out, runs = tmp_path / "docs", tmp_path / "runs"
    result = run_script(
        "scripts/reproduce.py", "lecture3_mlp", "--steps", "100", "--out", str(out), "--runs", str(runs)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 1
    row = rows[0]
    assert {
        "preset",
        "model",
        "params",
        "steps",
        "train_loss",
        "val_loss",
        "test_loss",
        "seconds",
        "reference_val",
    } <= row.keys()
    summary = json.loads((runs / "lecture3_mlp" / "summary.json").read_text())
    assert row["preset"] == "lecture3_mlp" and row["model"] == "mlp" and row["params"] == 11_897 and row["steps"] == 100
    assert row["val_loss"] == summary["val_loss"] and row["reference_val"] == 2.1027
    assert [step for step, _ in row["val_curve"]] == [100]  # one validation, at the end
    assert row["val_curve"][0][1] == pytest.approx(summary["val_loss"], abs=1e-4)
    table = (out / "results.md").read_text().splitlines()
    assert table[0].startswith("| preset |") and len(table) == 3
    assert table[2].startswith("| lecture3_mlp | mlp | 11,897 | 100 |") and "2.1027" in table[2]

    collected = run_script(
        "scripts/reproduce.py", "--collect", "lecture3_mlp", "--out", str(tmp_path / "again"), "--runs", str(runs)
    )
    assert collected.returncode == 0 and json.loads((tmp_path / "again" / "results.json").read_text()) == rows

    picture = tmp_path / "curves.png"
    plotted = run_script("scripts/plot_results.py", "--results", str(out / "results.json"), "--out", str(picture))
    assert plotted.returncode == 0, plotted.stderr[-2000:]
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reproduce_refuses_an_unknown_preset(tmp_path):
    result = run_script("scripts/reproduce.py", "lecture9_nothing", "--out", str(tmp_path))
    assert result.returncode != 0 and "unknown preset" in result.stderr and not list(tmp_path.iterdir())
