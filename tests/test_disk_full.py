"""A full disk at each kind of write (issue 36, item 3): every file the project writes is written whole or not at
all (a temporary file in the same directory, then os.replace), the old file is kept, no temporary file is left, and
the one line names the user's file (never /tmp/tmpXXXX) and the last good checkpoint. On a real, small tmpfs."""

import json
import subprocess
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from conftest import TINY, run_script
from makemore_lab import sweep_policy, sweep_summary
from makemore_lab.atomic_write import write_json_atomically
from makemore_lab.checkpoint import save_atomically
from makemore_lab.errors import UserError
from makemore_lab.train import train


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(kilobytes) -> a directory on a tmpfs of that size (a real ENOSPC when it is full)."""
    mounted = []

    def mount(kilobytes: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kilobytes}k", "tmpfs", str(where)], capture_output=True, text=True
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip() or 'not permitted'})")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> None:
    """Take every free byte of `directory`'s file system."""
    with open(directory / "filler", "wb", buffering=0) as f:  # unbuffered: nothing left to flush at close
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
        try:
            while True:
                f.write(b"\0")
        except OSError:
            pass


def temporaries(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.name.endswith(".tmp") or p.name.startswith("tmp")]


def test_a_checkpoint_save_on_a_full_disk_names_the_file_and_keeps_the_old_one(small_disk):
    disk = small_disk(256)
    path = disk / "checkpoints" / "last.ckpt"
    save_atomically({"global_step": 1, "w": torch.zeros(1000)}, path)
    old = path.read_bytes()
    fill(disk)
    with pytest.raises(OSError) as caught:
        save_atomically({"global_step": 2, "w": torch.ones(20_000)}, path)
    assert caught.value.filename == str(path) and "No space left" in caught.value.strerror
    assert path.read_bytes() == old  # the last good checkpoint is whole
    assert temporaries(disk) == []


def test_lightnings_saves_through_atomic_checkpoint_io_name_the_run_dirs_file(small_disk, tmp_path):
    """Trainer.save_checkpoint as every callback of a run calls it: Lightning's own writer stages the file in the
    system's temp dir and names that; AtomicCheckpointIO names the file and keeps the old one."""
    from makemore_lab.checkpoint_io import AtomicCheckpointIO

    disk = small_disk(256)
    trainer = pl.Trainer(
        plugins=[AtomicCheckpointIO()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.strategy.connect(pl.LightningModule())
    path = disk / "run" / "checkpoints" / "last.ckpt"
    trainer.strategy.checkpoint_io.save_checkpoint({"w": torch.zeros(100)}, path)
    old = path.read_bytes()
    fill(disk)
    with pytest.raises(OSError) as caught:
        trainer.strategy.checkpoint_io.save_checkpoint({"w": torch.zeros(50_000)}, path)
    assert caught.value.filename == str(path)
    assert path.read_bytes() == old and temporaries(disk) == []


def test_json_and_the_sweep_table_on_a_full_disk_keep_their_old_files(small_disk):
    disk = small_disk(64)
    summary = disk / "summary.json"
    write_json_atomically(summary, {"val_loss": 2.0})
    (disk / "0" / ".hydra").mkdir(parents=True)
    (disk / "0" / ".hydra" / "overrides.yaml").write_text("- optimizer.lr=0.1\n")
    sweep_summary.write_summary(disk)
    tables = {name: (disk / name).read_bytes() for name in ("summary.csv", "summary.md")}
    (disk / "0" / "failure.json").write_text(json.dumps({"error": "x" * 4000}) + "\n")  # the table would change
    fill(disk)
    with pytest.raises(OSError) as caught:
        write_json_atomically(summary, {"val_loss": 1.0, "samples": ["x" * 100] * 100})
    assert caught.value.filename == str(summary) and json.loads(summary.read_text()) == {"val_loss": 2.0}
    with pytest.raises(OSError) as caught:
        sweep_summary.write_summary(disk)
    assert caught.value.filename in {str(disk / name) for name in tables}
    assert {name: (disk / name).read_bytes() for name in tables} == tables
    assert temporaries(disk) == []


def test_a_failure_record_on_a_full_disk_stops_the_sweep_in_one_line(small_disk):
    """failure.json was written with write_text: a 0-byte file on a full disk, and a bare Errno 28."""
    disk = small_disk(64)
    job_dir = disk / "3"
    job_dir.mkdir()
    fill(disk)

    def failing_train(cfg):
        raise UserError("optimizer.lr must be a positive number below 1e30, got -1.0")

    cfg = OmegaConf.create({"paths": {"output_dir": str(job_dir)}})
    with pytest.raises(UserError) as caught:
        sweep_policy.job_result(failing_train, cfg, 3)
    line = str(caught.value)
    assert f"cannot write {job_dir / 'failure.json'} (No space left on device), so the sweep stops" in line
    assert "job 3 failed: optimizer.lr must be" in line and "no checkpoint was saved" in line
    assert not (job_dir / "failure.json").exists() and temporaries(disk) == []


class FillDisk(pl.Callback):
    """Fills the run dir's disk at the last moment before summary.json (a callback's summary_fields hook)."""

    def __init__(self, directory: str):
        self.directory = Path(directory)

    def summary_fields(self) -> dict:
        fill(self.directory)
        return {}


def test_summary_json_on_a_full_disk_names_it_and_the_last_good_checkpoint(small_disk, compose_train, small_names):
    out_dir = small_disk(512) / "run"
    cfg = compose_train(
        f"data.path={small_names}",
        "callbacks=none",
        "logger=none",
        f"paths.output_dir={out_dir}",
        "+callbacks.fill._target_=test_disk_full.FillDisk",
        f"+callbacks.fill.directory={out_dir}",
    )
    with pytest.raises(UserError) as caught:
        train(cfg)
    last = out_dir / "checkpoints" / "last.ckpt"
    assert str(caught.value).startswith(
        f"cannot write {out_dir / 'summary.json'} (No space left on device): "
        f"the run trained to step 20, and the last good checkpoint is {last}"
    )
    assert torch.load(last, weights_only=True)["global_step"] == 20
    assert not (out_dir / "summary.json").exists() and temporaries(out_dir) == []


def test_a_solo_run_on_a_full_disk_names_its_own_file_and_the_last_good_checkpoint(small_disk, small_names):
    run_dir = small_disk(120) / "run"
    result = run_script(
        "train.py", *TINY, f"data.path={small_names}", f"hydra.run.dir={run_dir}", "trainer.max_steps=60"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: cannot write the run's files (No space left on device: {run_dir}/"), line
    assert "/tmp/tmp" not in line and f"the last good checkpoint is {run_dir}/checkpoints/last.ckpt" in line, line
    assert temporaries(run_dir) == []
    torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)  # whole
