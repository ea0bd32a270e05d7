"""A logger's faults are not the run's (issue 36, item 4): a logger's server that cannot be reached is one line
before training (a bounded connection attempt, not minutes of retries and tracebacks), and a logger that fails while
the run trains is one line naming it and what to do, while training, the checkpoints and summary.json go on."""

import http.server
import json
import logging
import threading
from pathlib import Path

import pytest

from conftest import TINY, run_script
from makemore_lab.errors import UserError
from makemore_lab.train import train


class StartsThenFails(http.server.BaseHTTPRequestHandler):
    """An MLflow tracking server that starts a run (finds the experiment, creates the run) and then answers every
    call 503: a server that went wrong after the run started."""

    ANSWERS = {
        "/api/2.0/mlflow/experiments/get-by-name": {
            "experiment": {
                "experiment_id": "1",
                "name": "makemore-lab",
                "artifact_location": "/nonexistent",
                "lifecycle_stage": "active",
            }
        },
        "/api/2.0/mlflow/runs/create": {
            "run": {
                "info": {
                    "run_id": "r1",
                    "run_uuid": "r1",
                    "experiment_id": "1",
                    "user_id": "u",
                    "status": "RUNNING",
                    "start_time": 0,
                    "artifact_uri": "/nonexistent",
                    "lifecycle_stage": "active",
                    "run_name": "mlp",
                },
                "data": {},
            }
        },
    }

    def answer(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = self.ANSWERS.get(self.path.split("?", 1)[0])
        payload = json.dumps(body).encode() if body else b""
        self.send_response(200 if body else 503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = do_DELETE = answer

    def log_message(self, *args):
        pass


class Unavailable(StartsThenFails):
    """An MLflow tracking server that answers every call 503 (one that cannot start a run)."""

    ANSWERS = {}


def serve(handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def failing_server():
    server, url = serve(StartsThenFails)
    yield url
    server.shutdown()
    server.server_close()


@pytest.fixture
def unavailable_server():
    server, url = serve(Unavailable)
    yield url
    server.shutdown()
    server.server_close()


def one_line(result) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


def test_an_mlflow_server_that_cannot_be_reached_is_one_line_before_training(tmp_path, small_names):
    run_dir = tmp_path / "run"
    result = run_script(
        "train.py",
        *TINY,
        f"data.path={small_names}",
        f"hydra.run.dir={run_dir}",
        "logger=mlflow",
        "logger.mlflow.tracking_uri=http://127.0.0.1:1",
        timeout=120,
    )  # was 4.5 minutes of retries
    assert one_line(result) == (
        "error: logger mlflow: its server http://127.0.0.1:1 cannot be reached (Connection "
        "refused): start the tracking server, or set logger.mlflow.tracking_uri to one that "
        "runs (the default, sqlite:///logs/mlflow.db, needs none)"
    )
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "summary.json").exists()


def test_wandb_online_without_a_server_is_one_line_before_training(tmp_path, small_names, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:1")
    result = run_script(
        "train.py",
        *TINY,
        f"data.path={small_names}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "logger=wandb",
        "logger.wandb.offline=false",
        timeout=120,
    )
    line = one_line(result)
    assert line.startswith("error: logger wandb: its server http://127.0.0.1:1 cannot be reached"), line
    assert "logger.wandb.offline=true" in line


def test_a_logger_that_fails_while_training_is_one_line_and_the_run_finishes(
    compose_train, small_names, tmp_path, failing_server, caplog
):
    cfg = compose_train(
        f"data.path={small_names}", "logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={failing_server}"
    )
    with caplog.at_level(logging.ERROR):
        summary = train(cfg)
    faults = [r.getMessage() for r in caplog.records if "logger mlflow failed" in r.getMessage()]
    assert len(faults) == 1 and "\n" not in faults[0], faults  # once, then left out
    assert faults[0].startswith("logger mlflow failed (MlflowException: API request to endpoint") and "503" in faults[0]
    assert (
        "check the tracking server (logger.mlflow.tracking_uri), or train with another logger; it is left out"
        in faults[0]
    )
    out_dir = Path(cfg.paths.output_dir)
    assert json.loads((out_dir / "summary.json").read_text())["val_loss"] == summary["val_loss"]
    assert (out_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((out_dir / "tensorboard").rglob("events.out.tfevents.*"))  # the other logger kept logging


def test_a_server_that_answers_but_cannot_start_a_run_is_one_line_before_training(
    compose_train, small_names, unavailable_server
):
    cfg = compose_train(f"data.path={small_names}", "logger=mlflow", f"logger.mlflow.tracking_uri={unavailable_server}")
    with pytest.raises(UserError) as caught:
        train(cfg)
    assert str(caught.value).startswith(
        "logger mlflow cannot start its run (MlflowException: API request to endpoint "
        "/api/2.0/mlflow/experiments/get-by-name failed with error code 503"
    )
    assert str(caught.value).endswith(
        "check the tracking server (logger.mlflow.tracking_uri), or train with another logger"
    )
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()
