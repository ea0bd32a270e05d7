"""Each member of a population is a job with its own logger runs: its own W&B run and its own MLflow run, each
finished when the member ends, through the real entry point (`train.py -m hydra/launcher=population`)."""

import json
from pathlib import Path

import pytest

from conftest import run_script
from test_loggers import wandb_records

pytest.importorskip("mlflow", reason="needs the mlflow extra: pip install -e '.[mlflow]'")
pytest.importorskip("wandb", reason="needs the wandb extra: pip install -e '.[wandb]'")

LRS = ("0.1", "0.2", "0.3")


@pytest.fixture(scope="module")
def logged_population(tmp_path_factory, small_names):
    root = tmp_path_factory.mktemp("population_loggers")
    sweep_dir = root / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "hydra/launcher=population",
        "logger=[wandb,mlflow]",
        "debug=fast",
        "threads=1",
        f"optimizer.lr={','.join(LRS)}",
        f"data.path={small_names}",
        f"paths.log_dir={root / 'logs'}",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "population of 3" in result.stdout + result.stderr  # the three jobs trained together
    return root, sweep_dir


def history(run_file: Path) -> list[dict]:
    rows = []
    for record in wandb_records(run_file):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return rows


@pytest.mark.slow
def test_each_member_logs_into_its_own_finished_wandb_run(logged_population):
    _, sweep_dir = logged_population
    val_losses = []
    for job in range(len(LRS)):
        summary = json.loads((sweep_dir / str(job) / "summary.json").read_text())
        (run_dir,) = (sweep_dir / str(job) / "wandb").glob("offline-run-*")  # one run per member, in its own dir
        (run_file,) = run_dir.glob("run-*.wandb")
        rows = history(run_file)
        vals = [row["val/loss"] for row in rows if "val/loss" in row]
        assert len(vals) == 2, f"job {job}: {vals}"  # debug=fast validates at steps 10 and 20, this member only
        kinds = [r.WhichOneof("record_type") for r in wandb_records(run_file)]
        assert "exit" in kinds, f"job {job}'s W&B run was never finished"
        val_losses.append(vals[-1])
        assert summary["val_loss"] == pytest.approx(vals[-1], abs=0.05)  # its own numbers, not another member's
    assert len(set(val_losses)) == len(LRS)


@pytest.mark.slow
def test_each_member_is_its_own_finished_mlflow_run(logged_population):
    from mlflow import MlflowClient

    root, sweep_dir = logged_population
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'logs' / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "makemore-lab"]
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == len(LRS)
    by_dir = {run.data.tags["output_dir"]: run for run in runs}
    assert sorted(by_dir) == sorted(str(sweep_dir / str(job)) for job in range(len(LRS)))
    for run in runs:
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")] == [10, 20]
