"""Sweeps and scale-out, run as a user runs them: real multiruns of ./train.py (tiny step counts), their summary
tables read back, the Optuna sweeper's configs and the joblib plugin where installed, DDP on CPU with two processes, the LR finder."""

import csv
import json
import math
import os
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import CONFIG_DIR, ROOT, TINY, compose_config, read_scalars, run_script
from makemore_lab import sweep_summary

METRIC_COLUMNS = ["params", "steps", "train_loss", "val_loss", "test_loss", "time_s", "health", "error"]


def read_rows(sweep_dir: Path) -> list[dict]:
    with (sweep_dir / "summary.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def job_summary(sweep_dir: Path, job: str) -> dict:
    return json.loads((sweep_dir / job / "summary.json").read_text())


def job_overrides(sweep_dir: Path, job: str) -> dict:
    overrides = OmegaConf.to_container(OmegaConf.load(sweep_dir / job / ".hydra" / "overrides.yaml"))
    return dict(o.split("=", 1) if "=" in o else (o, "") for o in overrides)  # "~key" deletes: no value


def session_hparams(event_dir: Path) -> tuple[dict, list[str]]:
    """What TensorBoard's HParams tab shows for one run: its hparams and the names of its metrics."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import plugin_data_pb2

    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(event_dir))
    mux.Reload()
    hparams, metrics = {}, []
    for content in mux.PluginRunToTagToContent("hparams").values():
        for raw in content.values():
            data = plugin_data_pb2.HParamsPluginData.FromString(raw)
            if data.HasField("session_start_info"):
                for name, value in data.session_start_info.hparams.items():
                    hparams[name] = getattr(value, value.WhichOneof("kind"))
            if data.HasField("experiment"):
                metrics += [m.name.tag for m in data.experiment.metric_infos]
    return hparams, metrics


def with_tests_on_path() -> str:
    """PYTHONPATH for a subprocess that imports a test-only module from tests/."""
    return os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))


def check_rows_match_jobs(sweep_dir: Path, rows: list[dict]) -> None:
    """Every row holds its job's overrides and the numbers of its summary.json, best val loss first."""
    val_losses = [float(r["val_loss"]) for r in rows]
    assert val_losses == sorted(val_losses)
    for row in rows:
        summary = job_summary(sweep_dir, row["job"])
        assert float(row["val_loss"]) == summary["val_loss"]
        assert float(row["test_loss"]) == summary["test_loss"]
        assert float(row["train_loss"]) == summary["train_loss"]
        assert float(row["time_s"]) == summary["train_seconds"]
        assert int(row["params"]) == summary["params"] and int(row["steps"]) == summary["steps"] == 20
        for key, value in job_overrides(sweep_dir, row["job"]).items():
            assert row[key] == value


# ---------------------------------------------------------------------------------------------------------------------
# A 2x2 grid with the basic launcher: runs everywhere (no extra needed).


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory, small_names) -> Path:
    sweep_dir = tmp_path_factory.mktemp("grid") / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "model=bigram,mlp",
        "optimizer.lr=0.01,0.1",
        *TINY,
        f"data.path={small_names}",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir.parent / "console.txt").write_text(result.stdout)
    return sweep_dir


@pytest.mark.slow
def test_the_sweep_ends_with_its_table_on_the_console_once(grid_sweep):
    console = (grid_sweep.parent / "console.txt").read_text()
    assert console.count("sweep summary (4 jobs)") == 1  # at the end, not after every job
    md_table = [line for line in (grid_sweep / "summary.md").read_text().splitlines() if line.startswith("|")]
    assert console.rstrip().endswith("\n".join(md_table))  # the table itself, last


@pytest.mark.slow
def test_a_long_sweep_prints_its_best_rows_and_says_how_many_more(grid_sweep, monkeypatch, capsys):
    monkeypatch.setattr(sweep_summary, "PRINTED_ROWS", 3)
    sweep_summary.SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(grid_sweep)}}}))
    md_table = [line for line in (grid_sweep / "summary.md").read_text().splitlines() if line.startswith("|")]
    assert capsys.readouterr().out == "\n".join(md_table[:5]) + "\n... 1 more in summary.md\n"


@pytest.mark.slow
def test_grid_sweep_runs_each_combination_in_its_own_dir(grid_sweep):
    jobs = sorted(p.name for p in grid_sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1", "2", "3"]
    combos = {(job_overrides(grid_sweep, j)["model"], job_overrides(grid_sweep, j)["optimizer.lr"]) for j in jobs}
    assert combos == {("bigram", "0.01"), ("bigram", "0.1"), ("mlp", "0.01"), ("mlp", "0.1")}
    for job in jobs:
        summary = job_summary(grid_sweep, job)
        assert summary["output_dir"] == str(grid_sweep / job)
        assert summary["model"] == job_overrides(grid_sweep, job)["model"]


@pytest.mark.slow
def test_summary_csv_is_one_row_per_job_best_val_loss_first(grid_sweep):
    rows = read_rows(grid_sweep)
    assert len(rows) == 4
    columns = list(rows[0])
    assert columns[0] == "job" and columns[-len(METRIC_COLUMNS) :] == METRIC_COLUMNS
    assert {"model", "optimizer.lr", "trainer.max_steps", "data.path"} <= set(columns)
    assert {(r["model"], r["optimizer.lr"]) for r in rows} == {
        ("bigram", "0.01"),
        ("bigram", "0.1"),
        ("mlp", "0.01"),
        ("mlp", "0.1"),
    }
    check_rows_match_jobs(grid_sweep, rows)


@pytest.mark.slow
def test_summary_md_shows_the_varying_overrides_in_the_same_order(grid_sweep):
    md = (grid_sweep / "summary.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert table[0] == (
        "| job | model | optimizer.lr | params | steps | train_loss | val_loss | test_loss | time (s) "
        "| health | failed |"
    )
    body = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    rows = read_rows(grid_sweep)
    assert [cells[:3] for cells in body] == [[r["job"], r["model"], r["optimizer.lr"]] for r in rows]
    assert [cells[6] for cells in body] == [f"{float(r['val_loss']):.4f}" for r in rows]
    assert "`trainer.max_steps=20`" in md  # overrides shared by every job are listed once, above the table


@pytest.mark.slow
def test_tensorboard_hparams_tab_compares_the_same_runs(grid_sweep):
    for row in read_rows(grid_sweep):
        event_dir = grid_sweep / row["job"] / "tensorboard"
        hparams, metrics = session_hparams(event_dir)
        assert hparams["model"] == row["model"]
        assert hparams["optimizer.lr"] == pytest.approx(float(row["optimizer.lr"]))
        assert {"val/loss", "test/loss"} <= set(metrics)  # the HParams tab shows each run's own loss tags
        assert read_scalars(event_dir)["val/loss"][-1] == pytest.approx(float(row["val_loss"]), rel=1e-5)


@pytest.mark.slow
def test_summary_script_rebuilds_the_same_tables(grid_sweep):
    before = {name: (grid_sweep / name).read_text() for name in ("summary.csv", "summary.md")}
    for name in before:
        (grid_sweep / name).unlink()
    result = run_script("scripts/sweep_summary.py", str(grid_sweep))
    assert result.returncode == 0, result.stderr
    assert {name: (grid_sweep / name).read_text() for name in before} == before
    assert result.stdout == before["summary.md"]


def test_summary_script_refuses_a_dir_without_jobs(tmp_path):
    result = run_script("scripts/sweep_summary.py", str(tmp_path))
    assert result.returncode != 0 and "no job dirs" in result.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_diverged_job_is_listed_last_and_the_sweep_goes_on(tmp_path, small_names, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", with_tests_on_path())  # exploding_model.py
    sweep_dir = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "model._target_=exploding_model.ExplodingMLP",
        "+model.explode_at_call=5,1000",
        *TINY,
        f"data.path={small_names}",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_rows(sweep_dir)
    assert [(r["job"], r["+model.explode_at_call"]) for r in rows] == [("1", "1000"), ("0", "5")]
    assert float(rows[0]["val_loss"]) == job_summary(sweep_dir, "1")["val_loss"]
    assert rows[1]["val_loss"] == "" and not (sweep_dir / "0" / "summary.json").exists()


LAUNCHERS = {
    "basic": [],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],  # SLURM's code path, locally
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_failing_job_is_a_failed_row_with_its_reason_and_the_sweep_goes_on(tmp_path, small_names, launcher):
    if launcher != "basic":
        needs(f"hydra_{launcher.split('_')[0]}_launcher", launcher.split("_")[0])
    sweep_dir = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        *LAUNCHERS[launcher],
        "model=mlp_bn",
        "data.batch_size=1,32",
        *TINY,
        f"data.path={small_names}",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_rows(sweep_dir)
    assert [(r["data.batch_size"], bool(r["val_loss"])) for r in rows] == [("32", True), ("1", False)]
    assert rows[1]["error"].startswith("data.batch_size=1 cannot train mlp_bn: BatchNorm")
    assert "failed" in (sweep_dir / "summary.md").read_text() and "BatchNorm" in (sweep_dir / "summary.md").read_text()


@pytest.mark.slow
def test_bad_values_and_crashes_in_a_sweep_are_rows_not_the_end(tmp_path, small_names, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", with_tests_on_path())  # exploding_model.py
    sweep_dir = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "model._target_=makemore_lab.models.mlp.MLP,exploding_model.CrashingMLP",
        "optimizer.lr=0.1,-1",
        *TINY,
        f"data.path={small_names}",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {(r["model._target_"].rsplit(".", 1)[-1], r["optimizer.lr"]): r for r in read_rows(sweep_dir)}
    assert rows[("MLP", "0.1")]["val_loss"] and not rows[("MLP", "0.1")]["error"]
    assert rows[("MLP", "-1")]["error"] == "optimizer.lr must be a positive number below 1e30, got -1"
    # the model's contract is checked on one batch before training: its crash is the row's one line
    assert rows[("CrashingMLP", "0.1")]["error"] == (
        "model mlp: forward(idx) on a (2, 3) batch of indices raised RuntimeError: simulated crash inside the model"
    )
    assert list(rows)[0] == ("MLP", "0.1")  # the finished job first, the failed ones after it
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_model_that_rejects_the_block_size_fails_its_job_only(tmp_path, small_names):
    sweep_dir = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "model=wavenet",
        "block_size=3,4",
        *TINY,
        f"data.path={small_names}",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {r["block_size"]: r for r in read_rows(sweep_dir)}
    assert rows["4"]["val_loss"] and "power of two" in rows["3"]["error"]


# ---------------------------------------------------------------------------------------------------------------------
# Optional plugins: our Optuna sweeper (its search runs in test_optuna_sweeper.py), hydra-joblib-launcher,
# hydra-submitit-launcher.


def needs(plugin: str, extra: str):
    return pytest.importorskip(
        f"hydra_plugins.{plugin}", reason=f"needs the {extra} extra: pip install -e '.[{extra}]'"
    )


def compose_with_hydra(*overrides: str):
    return compose_config(*overrides, with_hydra=True)


@pytest.mark.parametrize("name", sorted(p.stem for p in Path(CONFIG_DIR, "hparams_search").glob("*.yaml")))
def test_every_search_minimises_over_keys_its_model_has(name):
    pytest.importorskip("optuna", reason="needs the optuna extra: pip install -e '.[optuna]'")
    cfg = compose_with_hydra(f"hparams_search={name}")
    sweeper = cfg.hydra.sweeper
    assert "optimizer.lr" in sweeper.params
    if sweeper._target_.endswith("OptunaSweeper"):  # an Optuna search (the others: a grid, e.g. for PBT)
        assert sweeper.direction == "minimize" and len(sweeper.params) >= 2
    for key in sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, f"{name} searches {key}, which the config does not have"


@pytest.mark.slow
def test_joblib_runs_jobs_in_parallel_each_in_its_own_dir(tmp_path, small_names):
    needs("hydra_joblib_launcher", "joblib")
    sweep_dir = tmp_path / "joblib"
    result = run_script(
        "train.py",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "seed=1,2",
        *TINY,
        f"data.path={small_names}",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    rows = [row for row in read_rows(sweep_dir) if row["n"] == "1"]  # the jobs' rows, not their seeds' (n = 2)
    assert sorted((r["job"], r["seed"]) for r in rows) == [("0", "1"), ("1", "2")]
    check_rows_match_jobs(sweep_dir, rows)
    output_dirs = [job_summary(sweep_dir, r["job"])["output_dir"] for r in rows]
    assert sorted(output_dirs) == [str(sweep_dir / "0"), str(sweep_dir / "1")]
    for job in ("0", "1"):
        event_files = list((sweep_dir / job).rglob("events.out.tfevents.*"))
        assert event_files and all(f.parent == sweep_dir / job / "tensorboard" / "mlp" for f in event_files)


def test_slurm_launcher_asks_for_one_task_per_device():
    needs("hydra_submitit_launcher", "submitit")
    cfg = compose_with_hydra("hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "hydra.sweep.dir=/sweep")
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == launcher.gpus_per_node == 4
    assert launcher.submitit_folder == "/sweep/.submitit/%j"


# ---------------------------------------------------------------------------------------------------------------------
# DDP on CPU: two processes (gloo).


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, small_names):
    root = tmp_path_factory.mktemp("ddp")
    run_dir, ranks_dir = root / "run", root / "ranks"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", with_tests_on_path())  # rank_weights.py, for both ranks
        result = run_script(
            "train.py",
            "trainer=ddp",
            *TINY,
            f"data.path={small_names}",
            f"hydra.run.dir={run_dir}",
            "+callbacks.rank_weights._target_=rank_weights.RankWeights",
            f"+callbacks.rank_weights.out_dir={ranks_dir}",
        )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((ranks_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    return root, run_dir, ranks, result


@pytest.mark.slow
def test_ddp_on_cpu_trains_in_two_processes_and_writes_one_summary_and_one_log(ddp_run):
    root, run_dir, ranks, result = ddp_run
    assert "MEMBER: 2/2" in result.stdout + result.stderr  # Lightning's line for the second rank joining
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["step"] for r in ranks] == [20, 20]
    assert ranks[0]["pid"] != ranks[1]["pid"]
    assert list(root.rglob("summary.json")) == [run_dir / "summary.json"]
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 20
    assert list(root.rglob(".hydra")) == [run_dir / ".hydra"]
    event_files = list(root.rglob("events.out.tfevents.*"))
    assert event_files and all(f.parent == run_dir / "tensorboard" / "mlp" for f in event_files)
    # events.out.tfevents.<time>.<host>.<pid>.<n>: every event file comes from rank 0's process
    assert {int(re.search(r"\.(\d+)\.\d+$", f.name).group(1)) for f in event_files} == {ranks[0]["pid"]}


@pytest.mark.slow
def test_ddp_ranks_average_gradients_and_end_with_identical_weights(ddp_run):
    _, _, ranks, _ = ddp_run
    assert ranks[0]["weights"] == pytest.approx(ranks[1]["weights"], rel=1e-6, abs=1e-9)


# ---------------------------------------------------------------------------------------------------------------------
# The learning-rate finder.


@pytest.mark.slow
def test_lr_finder_writes_the_lecture_plot_and_prints_a_suggestion(tmp_path, small_names):
    steps = 100
    result = run_script("scripts/lr_find.py", f"data.path={small_names}", "--steps", str(steps), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    png = tmp_path / "lr_find.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    with (tmp_path / "lr_find.csv").open(newline="") as f:
        points = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    assert len(points) == steps  # SGD on the MLP does not diverge below lr 1
    assert points[0]["exponent"] == pytest.approx(-3) and points[-1]["exponent"] == pytest.approx(0)
    assert all(p["lr"] == pytest.approx(10 ** p["exponent"]) for p in points)
    # The suggestion: a quarter decade below the smoothed curve's minimum, as one override line on stdout.
    match = re.fullmatch(r"suggested: optimizer\.lr=([0-9.e-]+)\n", result.stdout)
    assert match, result.stdout
    lowest = min(points, key=lambda p: p["smoothed"])["exponent"]
    assert math.log10(float(match.group(1))) == pytest.approx(max(lowest - 0.25, -3), abs=0.01)


@pytest.mark.slow
def test_ctrl_c_between_sweep_jobs_says_the_ended_jobs_are_kept(tmp_path, small_names, monkeypatch):
    # Before: the start-up handler's "interrupted before training started; nothing was saved", although job 0 had
    # finished and its summary.json was there.
    monkeypatch.setenv("PYTHONPATH", with_tests_on_path())
    sweep_dir = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "seed=1,2",
        *TINY,
        f"data.path={small_names}",
        f"hydra.sweep.dir={sweep_dir}",
        "+hydra.callbacks.ctrl_c._target_=job_events.CtrlCAfterFirstJob",
    )
    assert result.returncode == 130
    assert result.stderr.strip().splitlines()[-1] == (
        "error: interrupted between sweep jobs; the 1 job(s) that ended keep their results. Continue the sweep with: "
        f"python train.py -m seed=1,2 {' '.join(TINY)} data.path={small_names} "
        f"+hydra.callbacks.ctrl_c._target_=job_events.CtrlCAfterFirstJob hydra.sweep.dir={sweep_dir}"
    )
    assert (sweep_dir / "0" / "summary.json").is_file() and not (sweep_dir / "1").exists()
