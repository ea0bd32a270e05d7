"""A checkpoint never chooses which local file is read (issue 36, item 5): sample.py and eval.py read the data file
the user names (data.path=) or the packaged names.txt, checked against the checkpoint's fingerprint; the data path a
checkpoint recorded is never opened, so nothing of that file can reach the console. Through the real scripts."""

import os
import re
from pathlib import Path

import pytest
import torch

from conftest import run_script

SECRET = "SECRET.LINE=do-not-print"  # a line of a local file (with the reserved '.', as /etc/os-release's have)


@pytest.fixture
def trained(trained_run) -> Path:
    return trained_run[0] / "checkpoints" / "last.ckpt"


def crafted(trained: Path, directory: Path, recorded_path: str) -> Path:
    """The trained checkpoint, with another data path recorded in it (as someone else's checkpoint may have)."""
    checkpoint = torch.load(trained, weights_only=True)
    checkpoint["makemore_lab"]["data"]["path"] = recorded_path
    path = directory / f"crafted_{len(list(directory.glob('crafted_*')))}.ckpt"
    torch.save(checkpoint, path)
    return path


@pytest.fixture
def local_files(tmp_path) -> dict[str, str]:
    """Local files a crafted checkpoint might name: one whose lines would show in an error, and a FIFO that
    blocks whoever opens it (so a test that finishes proves it was never opened)."""
    secret = tmp_path / "secret.txt"
    secret.write_text(f"{SECRET}\nroot:x:0:0\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    return {"secret": str(secret), "fifo": str(fifo), "passwd": "/etc/passwd", "os-release": "/etc/os-release"}


@pytest.mark.parametrize("target", ["secret", "fifo", "passwd", "os-release"])
def test_eval_and_sample_never_open_the_data_path_a_checkpoint_names(trained, tmp_path, local_files, target):
    ckpt = crafted(trained, tmp_path, local_files[target])
    for script, extra in (("eval.py", []), ("sample.py", ["num_samples=3"])):
        result = run_script(script, f"ckpt_path={ckpt}", *extra, timeout=120)  # a FIFO opened would block: timeout
        console = result.stdout + result.stderr
        assert "Traceback" not in console and SECRET not in console and "root:x" not in console, console[-3000:]
        assert "HOME_URL" not in console and "contains '.'" not in console, console[-3000:]
        # the packaged names.txt is not the file it was trained on: eval refuses, sample keeps its samples
        assert "trained on other data" in console and "pass the file it was trained on, data.path=<file>" in console
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 3  # sample.py: its samples, novelty unknown


def test_the_file_the_user_names_is_used_and_checked(trained, tmp_path, small_names, local_files):
    ckpt = crafted(trained, tmp_path, local_files["secret"])
    evaluated = run_script("eval.py", f"ckpt_path={ckpt}", f"data.path={small_names}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert re.search(r"^val_loss: \d\.\d{4}$", evaluated.stdout, re.M) and evaluated.stderr == ""
    sampled = run_script("sample.py", f"ckpt_path={ckpt}", "num_samples=4", f"data.path={small_names}")
    assert sampled.returncode == 0 and re.search(r"\d/4 samples are novel", sampled.stderr), sampled.stderr

    other = tmp_path / "other.txt"  # not the file trained on: eval scores it as asked, and says so
    other.write_text("\n".join(small_names.read_text().split()[:300]) + "\n")
    evaluated = run_script("eval.py", f"ckpt_path={ckpt}", f"data.path={other}")
    assert evaluated.returncode == 0 and "val_loss:" in evaluated.stdout, evaluated.stderr[-3000:]
    assert f"note: the data file {other} is not the file this checkpoint was trained on" in evaluated.stderr
    sampled = run_script("sample.py", f"ckpt_path={ckpt}", "num_samples=2", f"data.path={other}")
    assert sampled.returncode == 0 and "novelty unknown: the data file" in sampled.stderr  # no false novelty
