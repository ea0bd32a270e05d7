"""The wheel as a user installs it: built from this checkout, installed into a fresh venv, its console scripts run
from an empty directory (no clone, no configs/ beside them), a user's own config dir and model class included.

The venv gets the wheel without its dependencies, and a .pth file pointing at this interpreter's site-packages
provides them, so the test never downloads or reinstalls torch. The wheel's own copy of makemore_lab is first on
the venv's path (checked), so the configs and names.txt the runs use are the ones inside the wheel.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import ROOT

pytestmark = pytest.mark.slow

PACKAGE = ROOT / "src" / "makemore_lab"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy of what the wheel is made of: setuptools reuses a build/ dir, whose stale files would
    # otherwise end up in the wheel, and the checkout stays as it was.
    source = tmp_path_factory.mktemp("source")
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    dist = tmp_path_factory.mktemp("dist")
    # --no-build-isolation: the installed setuptools builds it, offline
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(source)],
        check=True,
        capture_output=True,
        text=True,
    )
    [built] = dist.glob("makemore_lab-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel) -> Path:
    """bin/ of a fresh venv holding the wheel; its dependencies come from this interpreter's site-packages."""
    env_dir = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        capture_output=True,
        text=True,
    )
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env_dir / "bin"


def command(venv: Path, name: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv / name), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def test_the_wheel_carries_every_config_and_the_default_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = sorted(p.relative_to(PACKAGE.parent).as_posix() for p in (PACKAGE / "configs").rglob("*.yaml"))
    assert len(configs) > 40
    assert [c for c in configs if c not in names] == []
    assert "makemore_lab/datasets/names.txt" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert {"makemore-train", "makemore-sample", "makemore-eval"} <= set(re.findall(r"^(\S+) =", entry_points, re.M))


def test_the_venv_runs_the_wheels_copy(venv, tmp_path):
    result = subprocess.run(
        [str(venv / "python"), "-c", "import makemore_lab.configs as c; print(c.CONFIG_DIR)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(result.stdout.strip()).is_relative_to(venv.parent)  # not this checkout's src/


@pytest.fixture(scope="module")
def installed_run(venv, tmp_path_factory):
    """`makemore-train debug=fast` from an empty directory: the packaged configs and names.txt."""
    workdir = tmp_path_factory.mktemp("empty_dir")
    result = command(venv, "makemore-train", "debug=fast", cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    [run_dir] = (workdir / "logs" / "train" / "runs").iterdir()  # logs/ in the working directory
    return workdir, run_dir, result


def test_makemore_train_runs_from_an_empty_directory(installed_run):
    workdir, run_dir, result = installed_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["train_examples"] == 182625  # names.txt from the wheel
    assert (run_dir / "train.log").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
    assert sorted(p.name for p in workdir.iterdir()) == ["logs"]


def test_no_advertisement_or_third_party_deprecation_on_the_console(installed_run):
    _, _, result = installed_run
    console = result.stdout + result.stderr
    assert "Tip:" not in console and "litlogger" not in console and "litmodels" not in console
    assert "LeafSpec" not in console and "deprecated" not in console
    assert "GPU available" in console  # the filter drops the tips only, not Lightning's other lines


def test_makemore_sample_and_eval_read_the_checkpoint(venv, installed_run, tmp_path):
    _, run_dir, _ = installed_run
    ckpt = f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
    sampled = command(venv, "makemore-sample", ckpt, "num_samples=4", cwd=tmp_path)
    assert sampled.returncode == 0, sampled.stderr
    assert len(sampled.stdout.splitlines()) == 4
    evaluated = command(venv, "makemore-eval", ckpt, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    val = float(re.search(r"^val_loss: ([0-9.]+)$", evaluated.stdout, re.M).group(1))
    assert val == pytest.approx(summary["val_loss"], abs=1e-4)
    assert not list(tmp_path.iterdir())  # neither leaves a run dir behind


USER_MODEL = '''
"""A user's own model, following makemore_lab.models' contract: one embedding, then the output layer."""
from torch import nn


class EmbeddingBigram(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, n_embd: int = 8):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size)

    def forward(self, idx):
        return self.lm_head(self.wte(idx[:, -1]))
'''


def test_a_user_config_dir_adds_a_preset_and_a_model(venv, tmp_path):
    user = tmp_path / "my_configs"
    (user / "experiment").mkdir(parents=True)
    (user / "model").mkdir()
    (user / "model" / "embedding_bigram.yaml").write_text(
        textwrap.dedent("""\
        # @package _global_
        model_name: embedding_bigram
        block_size: 1
        model:
          _target_: my_models.EmbeddingBigram
          n_embd: 8
    """)
    )
    (user / "experiment" / "mine.yaml").write_text(
        textwrap.dedent("""\
        # @package _global_
        defaults:
          - override /model: embedding_bigram
        model:
          n_embd: 5
        optimizer:
          lr: 0.2
    """)
    )
    (tmp_path / "my_models.py").write_text(USER_MODEL)
    result = command(
        venv,
        "makemore-train",
        "--config-dir",
        str(user),
        "experiment=mine",
        "debug=fast",
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [run_dir] = (tmp_path / "logs" / "train" / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["model"] == "embedding_bigram"
    assert summary["params"] == 27 * 5 + 5 * 27 + 27  # the preset's n_embd=5 reached the user's class
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert config.model._target_ == "my_models.EmbeddingBigram" and config.optimizer.lr == 0.2
