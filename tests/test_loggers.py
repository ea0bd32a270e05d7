"""logger=csv, mlflow, wandb (offline) and several at once: one short run with all four loggers, each read back from
its own files with its own reader, against TensorBoard's events of the same run (which test_diagnostics.py and
test_train.py check against the run itself)."""

import csv
import importlib.util
import json
import logging
import struct
from pathlib import Path
from urllib.parse import urlparse

import pytest
from hydra.utils import get_class

from conftest import TINY, compose_config, read_scalar_events
from makemore_lab.errors import UserError
from makemore_lab.train import train

pytest.importorskip("mlflow", reason="needs the mlflow extra: pip install -e '.[mlflow]'")
pytest.importorskip("wandb", reason="needs the wandb extra: pip install -e '.[wandb]'")

FIGURES = ("activation_distribution", "gradient_distribution", "weight_gradient_distribution", "update_data_ratio")
# scalars every logger must hold: the losses, lr, and each family the diagnostics measure
REQUIRED = {
    "train/loss",
    "val/loss",
    "lr",
    "test/loss",
    "initial_loss/measured",
    "initial_loss/expected",
    "activation_mean/act",
    "activation_std/act",
    "saturation/act",
    "dead/act",
    "gradient_std/act",
    "grad_data/hidden.weight",
    "update_data/hidden.weight",
}


def compose_train(*overrides: str):
    return compose_config(*TINY, *overrides)


@pytest.fixture(scope="module")
def four_loggers(tmp_path_factory, small_names):
    """One run logging to TensorBoard, CSV, MLflow and W&B at once (the list syntax of a config group)."""
    root = tmp_path_factory.mktemp("loggers")
    cfg = compose_train(
        "logger=[tensorboard,csv,mlflow,wandb]",
        f"data.path={small_names}",
        f"paths.output_dir={root / 'run'}",
        f"paths.log_dir={root / 'logs'}",
        "trainer.log_every_n_steps=10",
        "callbacks.diagnostics.every_n_steps=5",
    )
    lines = []
    handler, package_log = logging.Handler(), logging.getLogger("makemore_lab")
    handler.emit = lambda record: lines.append(record.getMessage())
    level = package_log.level
    package_log.addHandler(handler)
    package_log.setLevel(logging.INFO)  # as under ./train.py (Hydra's logging config)
    try:
        summary = train(cfg)
    finally:
        package_log.removeHandler(handler)
        package_log.setLevel(level)
    reference = {
        tag: [(e.step, e.value) for e in events]
        for tag, events in read_scalar_events(root / "run" / "tensorboard").items()
        if not tag.startswith("hparams/")
    }  # TensorBoard's HParams tab only
    assert REQUIRED <= set(reference)
    return root, summary, reference, lines


def assert_same_scalars(series: dict, reference: dict) -> None:
    """Every scalar TensorBoard got, at the same steps with the same values."""
    for tag, points in reference.items():
        assert tag in series, tag
        assert [s for s, _ in series[tag]] == [s for s, _ in points], tag
        assert [v for _, v in series[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag


@pytest.mark.slow
def test_csv_holds_every_scalar(four_loggers):
    root, _, reference, _ = four_loggers
    with (root / "run" / "csv" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    series = {}
    for row in rows:
        for tag, value in row.items():
            if tag not in ("step", "epoch") and value != "":
                series.setdefault(tag, []).append((int(row["step"]), float(value)))
    assert_same_scalars(series, reference)
    assert (root / "run" / "csv" / "hparams.yaml").read_text().count("optimizer.lr") == 1


@pytest.mark.slow
def test_mlflow_holds_every_scalar_and_the_images_and_text_as_artifacts(four_loggers):
    from mlflow import MlflowClient

    root, summary, reference, _ = four_loggers
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'logs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("makemore-lab").experiment_id])
    assert run.data.tags["output_dir"] == summary["output_dir"] and run.data.params["model"] == "mlp"
    series = {
        tag: [
            (m.step, m.value)
            for m in sorted(client.get_metric_history(run.info.run_id, tag), key=lambda m: (m.step, m.timestamp))
        ]
        for tag in run.data.metrics
    }
    assert_same_scalars(series, reference)
    artifacts = Path(urlparse(run.info.artifact_uri).path)
    assert artifacts.is_relative_to(root / "logs" / "mlartifacts")
    assert all((artifacts / "figures" / name / "step_0000020.png").stat().st_size > 10_000 for name in FIGURES)
    assert sorted(p.name for p in (artifacts / "saturation_map" / "act").iterdir()) == [
        "step_0000000.png",
        "step_0000019.png",
    ]
    assert (artifacts / "samples" / "step_0000020.md").read_text().count("\n") >= 2
    assert "verdict" in (artifacts / "health" / "step_0000020.md").read_text()


def wandb_records(path: Path):
    """The records of a .wandb file (W&B's LevelDB-style log: 32 KiB blocks of chunks with a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    position, chunks = 7, []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunks.append(data[position + 7 : position + 7 + length])
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


@pytest.mark.slow
def test_wandb_runs_offline_and_holds_every_scalar_histogram_image_and_text(four_loggers):
    root, _, reference, _ = four_loggers
    (run_file,) = (root / "run" / "wandb").glob("offline-run-*/run-*.wandb")  # offline: nothing sent, no account
    history = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in wandb_records(run_file)
        if r.WhichOneof("record_type") == "history"
    ]
    media_tags = {key.removesuffix("/_type") for row in history for key in row if key.endswith("/_type")}
    series, media = {}, {}
    for row in history:
        step = row["trainer/global_step"]
        for key, value in row.items():
            if key.endswith("/_type"):
                media.setdefault(key.removesuffix("/_type"), []).append((step, value))
            elif not key.startswith(("_", "trainer/", "epoch")) and not any(
                key.startswith(t + "/") for t in media_tags
            ):
                series.setdefault(key, []).append((step, value))
    assert_same_scalars(series, reference)
    assert media["activation/act"] == [(s, "histogram") for s in (0, 5, 10, 15, 19)]
    assert media["gradient/act"] == [(s, "histogram") for s in (0, 5, 10, 15, 19)]
    assert media["saturation_map/act"] == [(0, "image-file"), (19, "image-file")]
    assert all(media[f"figures/{name}"] == [(20, "image-file")] for name in FIGURES)
    assert media["health"] == [(20, "table-file")] and (20, "table-file") in media["samples"]


@pytest.mark.slow
def test_one_line_says_which_logger_skips_what(four_loggers):
    *_, lines = four_loggers
    skipped = [line for line in lines if "skip" in line]
    assert skipped == [
        "loggers without some media get every scalar but skip them (csv: no histograms, no images, "
        "no text; mlflow: no histograms); TensorBoard and W&B keep all"
    ]


@pytest.mark.parametrize(
    "option, loggers",
    [
        ("csv", ["CSVLogger"]),
        ("mlflow", ["MLFlowLogger"]),
        ("wandb", ["WandbLogger"]),
        ("many", ["TensorBoardLogger", "CSVLogger"]),
        ("[tensorboard,wandb]", ["TensorBoardLogger", "WandbLogger"]),
    ],
)
def test_each_logger_option_and_list_composes_to_lightning_loggers(option, loggers):
    cfg = compose_train(f"logger={option}", "paths.output_dir=/run")
    assert [get_class(node._target_).__name__ for node in cfg.logger.values()] == loggers
    if option == "wandb":
        assert cfg.logger.wandb.offline is True and cfg.logger.wandb.save_dir == "/run"


def test_a_logger_whose_package_is_missing_is_one_line_naming_the_pip_command_before_the_run(tmp_path, small_names):
    assert importlib.util.find_spec("comet_ml") is None  # in no extra: absent, as a user's missing extra would be
    cfg = compose_train(
        "+logger.comet._target_=pytorch_lightning.loggers.CometLogger",
        f"data.path={small_names}",
        f"paths.output_dir={tmp_path / 'run'}",
    )
    with pytest.raises(UserError, match=r"^logger comet needs the comet_ml package: pip install comet-ml$"):
        train(cfg)
    assert not list((tmp_path / "run").glob("*/*"))  # nothing trained, nothing logged
