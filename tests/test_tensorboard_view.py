"""What TensorBoard shows of a sweep, read back with TensorBoard's own readers: each run named by its model, one val
loss tag, the HParams tab's first columns the keys the sweep changed, a word where a run was too short to validate."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, read_events

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, small_names) -> Path:
    """Two models, 20 steps each (validation every 2,000: too short to validate)."""
    tmp = tmp_path_factory.mktemp("tensorboard_view")
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            "model=bigram,mlp",
            f"data.path={small_names}",
            "trainer.max_steps=20",
            "num_samples=2",
            "threads=1",
            "hydra.sweep.dir=sweep",
        ],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (tmp / "console.txt").write_text(done.stdout + done.stderr)
    return tmp / "sweep"


def session(event_dir: Path) -> tuple[list[str], list[str]]:
    """(the hparams in the order the HParams tab lists them, the metric tags it shows) of one run."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import plugin_data_pb2

    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(event_dir))
    mux.Reload()
    for content in mux.PluginRunToTagToContent("hparams").values():
        for raw in content.values():
            data = plugin_data_pb2.HParamsPluginData.FromString(raw)
            if data.HasField("experiment"):
                return [h.name for h in data.experiment.hparam_infos], [
                    m.name.tag for m in data.experiment.metric_infos
                ]
    raise AssertionError(f"no HParams experiment under {event_dir}")


@pytest.mark.parametrize("job, model", [("0", "bigram"), ("1", "mlp")])
def test_each_run_is_named_by_its_model_and_has_one_val_loss_tag(sweep, job, model):
    event_files = list((sweep / job / "tensorboard").rglob("events.out.tfevents.*"))
    assert {f.parent.relative_to(sweep / job).as_posix() for f in event_files} == {f"tensorboard/{model}"}
    events = read_events(sweep / job / "tensorboard")
    summary = json.loads((sweep / job / "summary.json").read_text())
    scalars = events["scalars"]
    assert not [tag for tag in scalars if tag.startswith(("final/", "hparams/"))]
    # too short to validate: val/loss is one point, the exact final loss, and a note in the Text tab says why
    assert scalars["val/loss"] == [(20, pytest.approx(summary["val_loss"], rel=1e-6))]
    [(step, note)] = events["text"]["val/note"]
    assert step == 20 and "before its first validation" in note and "val_check_interval=2000" in note
    hparams, metrics = session(sweep / job / "tensorboard")
    assert hparams[0] == "model" and metrics == ["val/loss", "test/loss"]  # the swept key is the first column


def test_the_console_says_when_a_run_did_not_validate(sweep):
    console = (sweep.parent / "console.txt").read_text()
    assert console.count("no validation ran (trainer.val_check_interval > trainer.max_steps)") == 2
