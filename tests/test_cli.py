"""The root entry points run as a user runs them: train.py -> checkpoint -> sample.py / eval.py, and bad input."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY, run_script


def test_train_writes_a_complete_run_dir(trained_run):
    run_dir, result = trained_run
    assert (run_dir / ".hydra" / "config.yaml").is_file()  # the resolved config
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 20
    assert "samples:" in result.stdout and "final loss" in result.stdout + result.stderr


def test_the_console_shows_no_advertisement_or_third_party_deprecation(trained_run):
    _, result = trained_run
    console = result.stdout + result.stderr
    assert "💡 Tip" not in console and "litlogger" not in console  # Lightning's (src/makemore_lab/console.py)
    assert "LeafSpec" not in console and "FutureWarning" not in console


@pytest.mark.slow
def test_sample_prints_exactly_n_items_and_is_seeded(trained_run, small_names):
    run_dir, _ = trained_run
    ckpt = f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
    first = run_script("sample.py", ckpt, "num_samples=7", "seed=3", f"data.path={small_names}")  # for novelty
    again = run_script("sample.py", ckpt, "num_samples=7", "seed=3")
    other = run_script("sample.py", ckpt, "num_samples=7", "seed=4", "temperature=0.5", "top_k=5")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert len(lines) == 7 and all(lines)
    assert again.stdout == first.stdout and other.stdout != first.stdout
    assert re.search(r"\d+/7 samples are novel", first.stderr)


def test_sample_works_from_another_directory(trained_run, tmp_path):
    run_dir, _ = trained_run
    result = run_script(
        "sample.py", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "num_samples=2", cwd=tmp_path
    )
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 2
    assert not list(tmp_path.iterdir())  # sampling leaves no run directory behind


def test_eval_reproduces_the_runs_losses(trained_run, small_names):
    run_dir, _ = trained_run
    summary = json.loads((run_dir / "summary.json").read_text())
    result = run_script("eval.py", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"data.path={small_names}")
    assert result.returncode == 0, result.stderr
    losses = dict(re.findall(r"^(val_loss|test_loss): ([0-9.]+)$", result.stdout, re.M))
    assert float(losses["val_loss"]) == pytest.approx(summary["val_loss"], abs=1e-4)
    assert float(losses["test_loss"]) == pytest.approx(summary["test_loss"], abs=1e-4)


def imported_modules(stderr: str) -> list[str]:
    """Every module a `python -X importtime` process imported, from its stderr."""
    return [line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")]


@pytest.mark.slow
@pytest.mark.parametrize("script", ["sample.py", "eval.py"])
def test_sample_and_eval_never_import_lightning(trained_run, small_names, script):
    """From a checkpoint alone they need the net and the data (data.CharData), not Lightning's ~3 s import."""
    run_dir, _ = trained_run
    result = run_script(
        script,
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        f"data.path={small_names}",
        python_flags=("-X", "importtime"),
    )
    imported = set(imported_modules(result.stderr))
    assert result.returncode == 0 and result.stdout.strip(), result.stderr[-2000:]
    assert "torch" in imported and "makemore_lab.data.corpus" in imported
    assert not {"pytorch_lightning", "lightning_fabric", "makemore_lab.data.module"} & imported


def bad_file(tmp_path: Path, content: bytes) -> str:
    path = tmp_path / "data.txt"
    path.write_bytes(content)
    return f"data.path={path}"


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda t: ["data.path=/no/such/file.txt"], "data file not found"),
        (lambda t: [bad_file(t, b"")], "no items"),
        (lambda t: [bad_file(t, b"\n \n\n")], "no items"),
        (lambda t: [bad_file(t, b"ann\nbob\n")], "too few"),
        (lambda t: [bad_file(t, b"\x89PNG\r\n\x1a\n\x00\x00")], "binary"),
        (lambda t: [bad_file(t, b"caf\xe9\nbob\nann\nsue\n")], "not UTF-8"),
        (lambda t: ["model=nosuchmodel"], "Could not find 'model/nosuchmodel'"),
        (lambda t: ["optimizer.lr=fast"], "optimizer.lr must be a positive number"),
        (lambda t: ["optimizer.lr=-0.1"], "optimizer.lr must be a positive number"),
        (lambda t: ["block_size=0"], "block_size must be a positive integer"),
        (lambda t: ["model=wavenet", "block_size=6"], "power of two"),
        (lambda t: ["model.n_hidden=wide"], "model.n_hidden must be a positive integer, got 'wide'"),
        (lambda t: ["model=mlp", "block_size=null", "data.train_on=items"], "needs a sequence model"),
        (
            lambda t: ["experiment=lecture5_wavenet", "schedule=cosine"],
            "schedule.at is not an argument of makemore_lab.schedules.cosine; it takes: min_factor",
        ),
        (
            lambda t: ["optimizer=adam", "+optimizer.nesterov=true"],
            "optimizer.nesterov is not an argument of torch.optim.Adam",
        ),
        (lambda t: ["model=transformer", "block_size=4"], "needs block_size > the longest item"),
    ],
)
def test_bad_train_input_is_one_line_without_traceback(tmp_path, make_args, message):
    result = run_script("train.py", *make_args(tmp_path), f"hydra.run.dir={tmp_path / 'run'}", "trainer.max_steps=5")
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.parametrize("script", ["sample.py", "eval.py"])
def test_missing_and_corrupt_checkpoints(tmp_path, script):
    missing = run_script(script, f"ckpt_path={tmp_path / 'nope.ckpt'}")
    assert (
        missing.returncode == 2 and missing.stderr.strip() == f"error: checkpoint not found: {tmp_path / 'nope.ckpt'}"
    )
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    result = run_script(script, f"ckpt_path={corrupt}")
    assert result.returncode == 2 and "corrupt" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_test_set_spread_scores_the_checkpoints_own_test_split(trained_run, small_names):
    # scripts/test_set_spread.py backs docs/transformer_search.md's "1,000-name test sets spread by ±0.017".
    run_dir, _ = trained_run
    summary = json.loads((run_dir / "summary.json").read_text())
    result = run_script(
        "scripts/test_set_spread.py",
        str(run_dir / "checkpoints" / "last.ckpt"),
        "--subset",
        "20",
        "--draws",
        "300",
        "--data",
        str(small_names),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    whole = re.search(r"test split: (\d+) items, \d+ characters, loss ([\d.]+)", result.stdout)
    assert whole and int(whole[1]) == 60  # the last 10% of the 600 names
    assert float(whole[2]) == pytest.approx(summary["test_loss"], abs=1e-4)  # same weights, same split
    spread = re.search(
        r"20-item test sets \(300 draws\): loss std ([\d.]+), 5-95% range ([\d.]+) \.\. ([\d.]+)", result.stdout
    )
    assert spread and 0 < float(spread[1]) < 1
    assert float(spread[2]) < float(whole[2]) < float(spread[3])
    missing = run_script("scripts/test_set_spread.py", str(run_dir / "no_such.ckpt"))
    assert missing.returncode == 2 and "checkpoint not found" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.parametrize(
    "script,args,message",
    [
        ("train.py", ["optimizer.lr=-1"], "error: optimizer.lr must be a positive number below 1e30, got -1"),
        ("train.py", ["model=nosuch"], "error: In 'train': Could not find 'model/nosuch'"),
        ("train.py", ["model.n_hidden=wide"], "error: model.n_hidden must be a positive integer, got 'wide'"),
        ("sample.py", [], "error: ckpt_path=latest: no run under logs/ has a checkpoint"),  # an empty dir
        (
            "sample.py",
            ["ckpt_path=null"],
            f"error: ckpt_path is required: python {ROOT / 'sample.py'} ckpt_path=<run dir>",
        ),
        ("sample.py", ["ckpt_path=x.ckpt", "temperature=-1"], "error: temperature must be a non-negative number"),
        ("eval.py", [], f"error: ckpt_path is required: python {ROOT / 'eval.py'} ckpt_path=<run dir>"),
        ("eval.py", ["ckpt_path=latest"], "error: ckpt_path=latest: no run under logs/ has a checkpoint"),
    ],
)
def test_a_bad_value_is_one_line_before_torch_is_imported(script, args, message, tmp_path):
    """A mistyped override or a value against a documented rule is reported before the seconds torch and
    Lightning take to import (cli.lazy_task; Hydra's plugin scan imports neither): -X importtime lists every
    module the process imported."""
    result = run_script(script, *args, cwd=tmp_path, python_flags=("-X", "importtime"))
    imported = imported_modules(result.stderr)
    said = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert result.returncode == 2 and len(said) == 1 and said[0].startswith(message), result.stderr[-2000:]
    assert "hydra" in imported and not {"torch", "pytorch_lightning"} & set(imported)


# ---------------------------------------------------------------------------------------------- ckpt_path=latest

BIN = Path(sys.executable).parent  # the venv's console scripts (editable install)


def console(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """An installed console script, on PATH as an installed user has it."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([script, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, small_names):
    """A working dir whose logs/ holds two runs, the second one newer."""
    workdir = tmp_path_factory.mktemp("two_runs")
    runs = []
    for seed in (1, 2):
        run_dir = workdir / "logs" / "train" / "runs" / f"run{seed}"
        result = run_script(
            "train.py",
            *TINY,
            "callbacks=none",
            "logger=none",
            f"data.path={small_names}",
            f"seed={seed}",
            f"hydra.run.dir={run_dir}",
            cwd=workdir,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append(run_dir)
    return workdir, runs


def test_sample_without_ckpt_path_takes_the_newest_run_and_says_which(two_runs):
    workdir, (_, newest) = two_runs
    latest = console("makemore-sample", "num_samples=4", cwd=workdir)
    explicit = console(
        "makemore-sample", "num_samples=4", f"ckpt_path={newest / 'checkpoints' / 'last.ckpt'}", cwd=workdir
    )
    assert latest.returncode == 0, latest.stderr[-2000:]
    assert latest.stdout == explicit.stdout and len(latest.stdout.splitlines()) == 4  # stdout: the samples only
    assert latest.stderr.splitlines()[0] == (
        "ckpt_path=latest: the newest run is logs/train/runs/run2 (its checkpoints/last.ckpt)"
    )


def test_eval_ckpt_path_latest_scores_the_newest_run(two_runs, small_names):
    workdir, (_, newest) = two_runs
    result = run_script("eval.py", "ckpt_path=latest", f"data.path={small_names}", cwd=workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"checkpoint: {Path('logs/train/runs/run2/checkpoints/last.ckpt')}" in result.stdout
    summary = json.loads((newest / "summary.json").read_text())
    assert f"val_loss: {summary['val_loss']:.4f}" in result.stdout


def test_messages_name_the_command_typed(two_runs, tmp_path):
    workdir, _ = two_runs
    missing = console("makemore-eval", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip().startswith("error: ckpt_path is required: makemore-eval ckpt_path=<run dir>/")
    empty = console("makemore-sample", cwd=tmp_path)
    assert empty.returncode == 2 and empty.stderr.strip().startswith("error: ckpt_path=latest: no run under logs/")


def test_train_ckpt_path_latest_continues_the_newest_run_in_its_own_dir(two_runs, small_names, tmp_path):
    workdir, (older, newest) = two_runs
    copy = tmp_path / "work"
    shutil.copytree(workdir, copy)
    newest = copy / newest.relative_to(workdir)
    typed = [*TINY, "callbacks=none", "logger=none", f"data.path={small_names}", "seed=2"]
    before = {p: p.read_bytes() for p in newest.rglob("*") if p.is_file()}
    # Started with other overrides set: refused, naming the command that continues it; nothing written.
    refused = console("makemore-train", "ckpt_path=latest", "trainer.max_steps=40", cwd=copy)
    assert refused.returncode == 2
    line = refused.stderr.strip().splitlines()[-1]
    assert (
        line.startswith("error: the newest run (logs/train/runs/run2) was started with ")
        and (f"continue it with: makemore-train {' '.join(typed)} hydra.run.dir={newest} ckpt_path=") in line
    )
    assert {p: p.read_bytes() for p in newest.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in newest.parent.iterdir()) == ["run1", "run2"]

    swept = console("makemore-train", "-m", "ckpt_path=latest", cwd=copy)
    assert swept.returncode == 2 and swept.stderr.strip() == (
        "error: ckpt_path=latest continues one run, not a sweep: continue a sweep with its own command and "
        "hydra.sweep.dir=<its sweep dir>"
    )

    typed[0] = "trainer.max_steps=40"
    resumed = console("makemore-train", *typed, "ckpt_path=latest", cwd=copy)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((newest / "summary.json").read_text())
    assert (summary["steps"], summary["resumed_from_step"]) == (40, 20)
    assert sorted(p.name for p in newest.parent.iterdir()) == ["run1", "run2"]  # no new run dir
