"""scripts/benchmark.py runs end to end on tiny step counts (its numbers are never asserted: timings are noise here)."""

import json

import pytest

from conftest import run_script


@pytest.mark.slow
def test_benchmark_table_has_a_row_per_model_and_diagnostics_mode(tmp_path, small_names):
    out = tmp_path / "rows.json"
    # few steps (100 timed after the script's 100 warm-up steps, in calls of 50: the rate needs two calls) and a
    # small file (each framework run ends with exact losses on every split, which the rates leave out)
    result = run_script(
        "scripts/benchmark.py",
        "--models",
        "mlp",
        "transformer",
        "--steps",
        "100",
        "--repeats",
        "1",
        "--json",
        str(out),
        "data.batch_size=8",
        f"data.path={small_names}",
        "steps_per_call=50",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["model"], r["diagnostics"]) for r in rows] == [
        ("mlp", "on"),
        ("mlp", "off"),
        ("transformer", "on"),
        ("transformer", "off"),
    ]
    for row in rows:
        assert row["device"] == "cpu" and row["steps"] == 100
        assert row["hand_steps_per_s"] > 0 and row["framework_steps_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["framework_steps_per_s"] / row["hand_steps_per_s"])
    table = [
        line for line in result.stdout.splitlines() if line.startswith("| mlp") or line.startswith("| transformer")
    ]
    assert len(table) == 4


def test_population_step_benchmark_has_a_row_per_model_and_size_and_takes_overrides():
    """scripts/benchmark_population_step.py end to end: its rows, and the overrides reaching every member and the
    single model (a tiny width, as for the host-work floor)."""
    result = run_script(
        "scripts/benchmark_population_step.py",
        "--models",
        "mlp",
        "--members",
        "2",
        "3",
        "--steps",
        "20",
        "--warmup",
        "5",
        "--repeats",
        "1",
        "--profile",
        "3",
        "model.n_hidden=4",
        "model.n_embd=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for size in (2, 3):  # a profile after each row: the folded forward's ops, counted over the 3 steps
        assert f"mlp, {size} members: torch.profiler over 3 population steps" in result.stdout
        assert f"mlp, {size} members, by input shapes:" in result.stdout
    assert "aten::bmm" in result.stdout and "MembersLinearBackward" in result.stdout
    assert "Input Shapes" in result.stdout and "[[3, 32, " in result.stdout  # 3 members' rows of 32, stacked
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| mlp")]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [("mlp", "2"), ("mlp", "3")]
    for row in rows:
        solo, together = float(row[2].replace(",", "")), float(row[3].replace(",", ""))
        assert solo > 0 and together > 0
        # the rates are printed rounded to whole steps/s, the ratio (of the unrounded rates) to 0.01
        ratio = float(row[4].strip().removesuffix("x"))
        assert (solo - 0.5) / (together + 0.5) - 0.005 <= ratio <= (solo + 0.5) / (together - 0.5) + 0.005


def test_population_step_benchmark_refuses_a_bad_override_in_one_line():
    result = run_script(
        "scripts/benchmark_population_step.py",
        "--models",
        "mlp",
        "--members",
        "2",
        "--steps",
        "5",
        "model.n_hidden=wide",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: model.n_hidden must be a positive integer, got 'wide'"


@pytest.mark.slow
def test_figures_benchmark_times_each_setting_on_a_measured_member():
    """scripts/benchmark_figures.py end to end: a row per setting, each with the four PNGs it wrote (timings are
    never asserted: noise here)."""
    result = run_script("scripts/benchmark_figures.py", "--models", "mlp", "--rounds", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| mlp")]
    assert [r[1].strip() for r in rows] == [
        "defaults (force_autohint x8, zlib 6)",
        "unhinted, zlib 6",
        "figures.py's (unhinted, zlib 1)",
    ]
    for row in rows:
        assert float(row[2]) > 0 and int(row[3].replace(",", "")) > 4 * 10_000  # four real figures


def test_scoring_benchmark_times_every_window_against_distinct_contexts_on_every_split(small_names):
    """scripts/benchmark_scoring.py end to end: a row per split with the windows, their distinct contexts (fewer),
    both timings and a loss difference of float32 size (the same number); its overrides reach the model (the small
    data file); a model scored on whole items is named, not timed."""
    result = run_script(
        "scripts/benchmark_scoring.py", "--models", "mlp", "rnn", "--rounds", "1", f"data.path={small_names}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [
        [cell.strip() for cell in line.split("|")[1:-1]]
        for line in result.stdout.splitlines()
        if line.startswith("| mlp")
    ]
    assert [r[1] for r in rows] == ["train", "val", "test"]
    for row in rows:
        windows, contexts = (int(cell.replace(",", "")) for cell in row[2:4])
        assert 0 < contexts < windows < 5_000 and float(row[4]) > 0 and float(row[5]) > 0
        assert float(row[7]) < 1e-5
    assert "| rnn | (scored on whole items: not timed here)" in result.stdout
