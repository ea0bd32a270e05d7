"""The Python API (makemore_lab.train / sweep) through the real code: runs in the working directory's logs/, results
read back from the run's own files and compared with what the CLI reports for the same run. The API runs the
command line (makemore-train in a child process): its launchers, sweepers, dir checks and messages, and nothing
of a run reaches the calling process."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

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


@pytest.mark.slow
def test_train_runs_in_logs_of_the_working_directory(api_run):
    workdir, run = api_run
    assert run.run_dir.parent == workdir.resolve() / "logs" / "train" / "runs"
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert (run.train_loss, run.val_loss, run.test_loss) == (
        summary["train_loss"],
        summary["val_loss"],
        summary["test_loss"],
    )
    assert run.summary["steps"] == 20
    hydra_dir = run.run_dir / ".hydra"
    assert (run.run_dir / "train.log").read_text().count("final loss") == 1  # the CLI's log file
    assert "trainer.log_every_n_steps=5" in (hydra_dir / "overrides.yaml").read_text()
    assert callable(makemore_lab.train)  # still the function after the makemore_lab.train module was imported


@pytest.mark.slow
def test_history_is_the_runs_tensorboard_events(api_run):
    _, run = api_run
    run_dir = run.run_dir
    history = makemore_lab.Run(run_dir).history  # read again from the dir
    scalars = read_scalars(run_dir / "tensorboard")
    assert [step for step, _ in history["train/loss"]] == [5, 10, 15, 20]
    assert [value for _, value in history["train/loss"]] == scalars["train/loss"]
    assert [step for step, _ in history["val/loss"]] == [10, 20]


@pytest.mark.slow
def test_net_and_samples_match_the_checkpoint_and_makemore_sample(api_run):
    _, run = api_run
    assert isinstance(run.net, torch.nn.Module) and not run.net.training
    assert sum(p.numel() for p in run.net.parameters()) == run.summary["params"]
    result = run_script("sample.py", f"ckpt_path={run.checkpoint_path}", "num_samples=5", "seed=7")
    assert result.returncode == 0, result.stderr
    assert run.sample(5, seed=7) == result.stdout.splitlines()


@pytest.mark.slow
def test_health_and_figures_come_from_the_run_dir(api_run):
    _, run = api_run
    assert run.health == run.summary["health"] and isinstance(run.health.ok, bool)
    assert str(run.health).splitlines()[-1].strip().startswith("verdict:")
    assert sorted(run.figures) == [
        "activation_distribution",
        "gradient_distribution",
        "update_data_ratio",
        "weight_gradient_distribution",
    ]
    assert all(f._repr_png_().startswith(b"\x89PNG") for f in run.figures.values())
    html = run._repr_html_()
    assert html.count("data:image/png;base64,") == 4 and "verdict:" in html


@pytest.mark.parametrize(
    "override, message",
    [
        ("model=mpl", "Could not find 'model/mpl'"),
        ("no_such_key=1", "Could not override 'no_such_key'"),
        ("optimizer.lr=fast", "optimizer.lr must be a positive number"),
        ("trainer.max_steps=[", "bad override 'trainer.max_steps=['"),
        ("model=null", "Config group override must be a string or a list. Got NoneType"),  # docs/reliability_keys.md
    ],
)
def test_a_bad_override_is_a_one_line_user_error(override, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as raised:
        makemore_lab.train(*TINY, override)
    assert message in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.slow
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
    result = subprocess.run(
        [sys.executable, "-c", "import makemore_lab, sys; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "False"


@pytest.mark.slow
def test_the_jobs_hydra_config_holds_its_overrides(api_run):
    """As the CLI's: resume.py builds the command that continues an interrupted run from them."""
    _, run = api_run
    overrides = (run.run_dir / ".hydra" / "hydra.yaml").read_text()
    assert re.search(r"task:\n(\s+- .+\n)+", overrides) and "trainer.log_every_n_steps=5" in overrides


@pytest.mark.slow
def test_config_dir_adds_a_users_preset_as_config_dir_does_on_the_command_line(tmp_path, monkeypatch, small_names):
    (tmp_path / "my_configs" / "experiment").mkdir(parents=True)
    (tmp_path / "my_configs" / "experiment" / "narrow.yaml").write_text("# @package _global_\nmodel:\n  n_hidden: 7\n")
    monkeypatch.chdir(tmp_path)
    run = makemore_lab.train(
        *TINY, f"data.path={small_names}", "callbacks=none", "experiment=narrow", config_dir="my_configs"
    )
    assert run.config.model.n_hidden == 7
    assert run.net.hidden.out_features == 7  # the trained network is the preset's
    with pytest.raises(UserError, match="Additional config directory .*no_such_dir' not found"):
        makemore_lab.train(*TINY, config_dir="no_such_dir")


# ------------------------------------------------------------------------------- the command line's own path


def files_of(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `directory` (and every dir, as None) with its bytes and modification time."""
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
        for p in sorted(directory.rglob("*"))
    }


QUICK = [*TINY, "callbacks=none", "logger=none"]


def test_a_second_sweep_into_a_sweep_dir_is_refused_leaving_it_byte_for_byte(tmp_path, monkeypatch, small_names):
    monkeypatch.chdir(tmp_path)
    sweep_dir = tmp_path / "sweep"
    first = makemore_lab.sweep(
        *QUICK, f"data.path={small_names}", "optimizer.lr=0.1,0.2", f"hydra.sweep.dir={sweep_dir}"
    )
    assert len(first) == 2 and not any(row["error"] for row in first)
    before = files_of(sweep_dir)
    with pytest.raises(UserError) as raised:
        makemore_lab.sweep(*QUICK, f"data.path={small_names}", "optimizer.lr=0.3", f"hydra.sweep.dir={sweep_dir}")
    message = str(raised.value)
    assert message.startswith(f"sweep dir {sweep_dir} holds another sweep (makemore_lab.sweep(") and "\n" not in message
    assert files_of(sweep_dir) == before

    foreign = tmp_path / "my_notes"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine\n")
    before = files_of(foreign)
    with pytest.raises(UserError, match="is not empty and holds no sweep"):
        makemore_lab.sweep(*QUICK, f"data.path={small_names}", "optimizer.lr=0.1,0.2", f"hydra.sweep.dir={foreign}")
    assert files_of(foreign) == before


@pytest.mark.slow
def test_train_into_a_finished_run_dir_refuses_without_rewriting_it(api_run, small_names):
    workdir, run = api_run
    before = files_of(run.run_dir)
    with pytest.raises(UserError) as raised:
        makemore_lab.train(*TINY, f"data.path={small_names}", f"hydra.run.dir={run.run_dir}")
    assert "holds a finished run" in str(raised.value) and "\n" not in str(raised.value)
    assert files_of(run.run_dir) == before  # .hydra/* included: refused before Hydra wrote anything


def test_a_sweep_with_the_population_launcher(tmp_path, monkeypatch, small_names, capsys):
    monkeypatch.chdir(tmp_path)
    table = makemore_lab.sweep(*QUICK, f"data.path={small_names}", "hydra/launcher=population", "optimizer.lr=0.1,0.2")
    assert sorted(row["optimizer.lr"] for row in table) == ["0.1", "0.2"] and not any(row["error"] for row in table)
    launcher = (table.sweep_dir / "multirun.yaml").read_text()
    assert "makemore_population_launcher" in launcher
    assert all(table.run(i).summary["steps"] == 20 for i in range(2))
    assert "population of 2" in capsys.readouterr().out  # the launcher's console, streamed into the caller's


def test_a_sweep_with_the_optuna_sweeper(tmp_path, monkeypatch, small_names):
    monkeypatch.chdir(tmp_path)
    table = makemore_lab.sweep(
        "hparams_search=mlp_optuna", "hydra.sweeper.n_trials=2", *QUICK, f"data.path={small_names}"
    )
    assert len(table) == 2 and not any(row["error"] for row in table)
    assert (table.sweep_dir / "optimization_results.yaml").is_file()  # the sweeper's own result file


KERNEL = textwrap.dedent("""
    import json, logging, os, signal, sys, warnings
    import makemore_lab
    from makemore_lab.errors import TrainingInterrupted

    def state():
        loggers = logging.root.manager.loggerDict.values()
        return {"root": [repr(h) for h in logging.root.handlers], "level": logging.root.level,
                "handlers": sorted(repr(h) for lg in loggers if isinstance(lg, logging.Logger) for h in lg.handlers),
                "warning filters": [repr(f) for f in warnings.filters],
                "signals": [repr(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)],
                "argv": list(sys.argv), "cwd": os.getcwd(), "environ": dict(os.environ),
                "imported": sorted(m for m in ("torch", "pytorch_lightning", "numpy") if m in sys.modules)}

    before = state()
    try:
        result = repr(makemore_lab.train(*sys.argv[1:]))
    except TrainingInterrupted as err:
        result = f"TrainingInterrupted: {err}"
    print("KERNEL " + json.dumps({"before": before, "after": state(), "result": result}))
""")


def kernel(tmp_path: Path, *overrides: str) -> subprocess.Popen:
    """A Python process (a notebook kernel) that calls makemore_lab.train(*overrides) and reports its own state."""
    script = tmp_path / "kernel.py"
    script.write_text(KERNEL)
    return subprocess.Popen(
        [sys.executable, str(script), *overrides],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kernel_report(stdout: str) -> dict:
    [line] = [line for line in stdout.splitlines() if line.startswith("KERNEL ")]
    return json.loads(line.removeprefix("KERNEL "))


def test_a_run_leaves_the_calling_process_as_it_was(tmp_path, small_names):
    proc = kernel(tmp_path, *TINY, f"data.path={small_names}")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    report = kernel_report(out)
    assert report["result"].startswith("Run(") and "20 steps" in report["result"]
    assert report["after"] == report["before"]
    assert report["after"]["imported"] == []  # no torch, Lightning or numpy: the run happened elsewhere
    assert "final loss" in out + err  # its console streamed into the caller's


def test_ctrl_c_stops_the_run_and_the_raised_call_resumes_it_as_printed(tmp_path, small_names):
    """The kernel alone gets SIGINT (a notebook's stop button): forwarded to the run, which saves and stops."""
    proc = kernel(
        tmp_path,
        "trainer.max_steps=10000000",
        "trainer.accelerator=cpu",
        "threads=1",
        "num_samples=1",
        "callbacks.last_checkpoint.every_seconds=0.3",
        "~callbacks.diagnostics",
        "logger=none",
        f"data.path={small_names}",
    )
    runs = tmp_path / "logs" / "train" / "runs"
    while not list(runs.glob("*/checkpoints/last.ckpt")) and proc.poll() is None:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=300)
    finally:  # never leave the run training on: a second Ctrl-C makes the API abort its child, then the kernel goes
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
            time.sleep(2)
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    report = kernel_report(out)
    message = report["result"]
    assert message.startswith("TrainingInterrupted: Ctrl-C: stopped at step") and "\n" not in message
    assert report["after"] == report["before"]
    [run_dir] = runs.iterdir()
    step = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert f"stopped at step {step} of 10000000" in message
    call = message.split("Resume with: ", 1)[1]
    assert call.startswith("makemore_lab.train('trainer.max_steps=10000000', ")
    # As printed, with a nearer end: the run's child has ended (else its run dir would be refused as in use).
    call = call.replace("trainer.max_steps=10000000", f"trainer.max_steps={step + 20}")
    resumed = subprocess.run(
        [sys.executable, "-c", f"import makemore_lab; {call}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["steps"], summary["resumed_from_step"]) == (step + 20, step)
