"""The Python API (makemore_lab.train / sweep) through the real code: runs in the working directory's logs/, results
read back from the run's own files and compared with what the CLI reports for the same run."""

import json
import logging
import re
import subprocess
import sys

import pytest
import torch

import makemore_lab
from conftest import TINY, read_scalars, run_script
from makemore_lab.errors import UserError


@pytest.fixture(scope="module")
def api_run(tmp_path_factory, small_names):
    workdir = tmp_path_factory.mktemp("notebook_dir")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        handlers = logging.getLogger().handlers[:]
        run = makemore_lab.train(*TINY, f"data.path={small_names}", "trainer.log_every_n_steps=5")
        assert logging.getLogger().handlers == handlers  # the caller's logging is given back after the run
    return workdir, run


def test_train_runs_in_logs_of_the_working_directory(api_run):
    workdir, run = api_run
    assert run.run_dir.parent == workdir.resolve() / "logs" / "train" / "runs"
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert (run.train_loss, run.val_loss, run.test_loss) == (summary["train_loss"], summary["val_loss"],
                                                            summary["test_loss"])
    assert run.summary["steps"] == 20
    hydra_dir = run.run_dir / ".hydra"
    assert (run.run_dir / "train.log").read_text().count("final loss") == 1  # the CLI's log file
    assert "trainer.log_every_n_steps=5" in (hydra_dir / "overrides.yaml").read_text()
    assert callable(makemore_lab.train)  # still the function after the makemore_lab.train module was imported


def test_history_is_the_runs_tensorboard_events(api_run):
    _, run = api_run
    run_dir = run.run_dir
    history = makemore_lab.Run(run_dir).history  # read again from the dir
    scalars = read_scalars(run_dir / "tensorboard")
    assert [step for step, _ in history["train/loss"]] == [5, 10, 15, 20]
    assert [value for _, value in history["train/loss"]] == scalars["train/loss"]
    assert [step for step, _ in history["val/loss"]] == [10, 20]


def test_net_and_samples_match_the_checkpoint_and_makemore_sample(api_run):
    _, run = api_run
    assert isinstance(run.net, torch.nn.Module) and not run.net.training
    assert sum(p.numel() for p in run.net.parameters()) == run.summary["params"]
    result = run_script("sample.py", f"ckpt_path={run.checkpoint_path}", "num_samples=5", "seed=7")
    assert result.returncode == 0, result.stderr
    assert run.sample(5, seed=7) == result.stdout.splitlines()


def test_health_and_figures_come_from_the_run_dir(api_run):
    _, run = api_run
    assert run.health == run.summary["health"] and isinstance(run.health.ok, bool)
    assert str(run.health).splitlines()[-1].strip().startswith("verdict:")
    assert sorted(run.figures) == ["activation_distribution", "gradient_distribution", "update_data_ratio",
                                   "weight_gradient_distribution"]
    assert all(f._repr_png_().startswith(b"\x89PNG") for f in run.figures.values())
    html = run._repr_html_()
    assert html.count("data:image/png;base64,") == 4 and "verdict:" in html


@pytest.mark.parametrize("override, message", [
    ("model=mpl", "Could not find 'model/mpl'"),
    ("no_such_key=1", "Could not override 'no_such_key'"),
    ("optimizer.lr=fast", "optimizer.lr must be a positive number"),
    ("trainer.max_steps=[", "bad override 'trainer.max_steps=['"),
])
def test_a_bad_override_is_a_one_line_user_error(override, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as raised:
        makemore_lab.train(*TINY, override)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_sweep_returns_the_table_with_a_failed_job_last(tmp_path, monkeypatch, small_names):
    monkeypatch.chdir(tmp_path)
    table = makemore_lab.sweep(*TINY, f"data.path={small_names}", "callbacks=none", "optimizer.lr=-1,0.1,0.3")
    [sweep_dir] = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    assert table.sweep_dir == sweep_dir.resolve() and len(table) == 3
    ok = [row for row in table if not row["error"]]
    assert sorted(row["optimizer.lr"] for row in ok) == ["0.1", "0.3"]
    assert ok[0]["val_loss"] <= ok[1]["val_loss"]
    assert table[2]["optimizer.lr"] == "-1" and "optimizer.lr must be a positive number" in table[2]["error"]
    assert str(table) == (sweep_dir / "summary.md").read_text()
    assert table.run(0).val_loss == ok[0]["val_loss"]


def test_importing_the_package_does_not_import_torch():
    result = subprocess.run([sys.executable, "-c", "import makemore_lab, sys; print('torch' in sys.modules)"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_the_jobs_hydra_config_holds_its_overrides(api_run):
    """As the CLI's: resume.py builds the command that continues an interrupted run from them."""
    _, run = api_run
    overrides = (run.run_dir / ".hydra" / "hydra.yaml").read_text()
    assert re.search(r"task:\n(\s+- .+\n)+", overrides) and "trainer.log_every_n_steps=5" in overrides


def test_config_dir_adds_a_users_preset_as_config_dir_does_on_the_command_line(tmp_path, monkeypatch, small_names):
    (tmp_path / "my_configs" / "experiment").mkdir(parents=True)
    (tmp_path / "my_configs" / "experiment" / "narrow.yaml").write_text("# @package _global_\nmodel:\n  n_hidden: 7\n")
    monkeypatch.chdir(tmp_path)
    run = makemore_lab.train(*TINY, f"data.path={small_names}", "callbacks=none", "experiment=narrow",
                             config_dir="my_configs")
    assert run.config.model.n_hidden == 7
    assert run.net.hidden.out_features == 7  # the trained network is the preset's
    with pytest.raises(UserError, match="config dir not found"):
        makemore_lab.train(*TINY, config_dir="no_such_dir")
