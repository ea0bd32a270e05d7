"""The training engine keeps Lightning's meaning: Trainer flags, stock callbacks, per-step hooks, global_step."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from conftest import ROOT, read_scalar_steps, read_scalars
from makemore_lab.engine import DIVERGENCE_FACTOR, divergence, step_counter
from makemore_lab.errors import TrainingDiverged
from makemore_lab.train import train


def probe(name: str, cls: str, out_file: Path) -> list[str]:
    return [f"+callbacks.{name}._target_=probes.{cls}", f"+callbacks.{name}.out_file={out_file}"]


@pytest.mark.parametrize("steps_per_call", [1, 200])
@pytest.mark.parametrize("algorithm, limit", [("norm", 0.5), ("value", 0.01)])
def test_gradient_clipping_applies_at_every_optimizer_step(
    compose_train, small_names, tmp_path, steps_per_call, algorithm, limit
):
    """naive init makes large gradients: unclipped they exceed the limit, clipped none does, on either path."""
    run = [f"data.path={small_names}", "model.init=naive", "trainer.max_steps=30", f"steps_per_call={steps_per_call}"]
    train(
        compose_train(
            *run, *probe("grads", "GradientProbe", tmp_path / "free.json"), f"paths.output_dir={tmp_path}/free"
        )
    )
    train(
        compose_train(
            *run,
            *probe("grads", "GradientProbe", tmp_path / "clipped.json"),
            f"trainer.gradient_clip_val={limit}",
            f"trainer.gradient_clip_algorithm={algorithm}",
            f"paths.output_dir={tmp_path}/clipped",
        )
    )
    measure = "norms" if algorithm == "norm" else "max_abs"
    free, clipped = (json.loads((tmp_path / f).read_text())[measure] for f in ("free.json", "clipped.json"))
    assert len(free) == len(clipped) == 30
    assert max(free) > 2 * limit
    assert max(clipped) <= limit * (1 + 1e-3)  # float32 rounding of (before - after) / lr


@pytest.mark.slow
def test_probe_callback_gets_every_per_step_hook_with_one_step_per_batch(compose_train, small_names, tmp_path):
    out = tmp_path / "hooks.json"
    summary = train(
        compose_train(
            f"data.path={small_names}",
            "trainer.max_steps=900",
            "steps_per_call=1",
            "trainer.val_check_interval=300",
            *probe("hooks", "HookCounter", out),
        )
    )
    calls = json.loads(out.read_text())
    assert summary["steps"] == 900
    for hook in (
        "on_train_batch_start",
        "on_train_batch_end",
        "on_before_backward",
        "on_after_backward",
        "on_before_optimizer_step",
    ):
        assert calls["calls"][hook] == 900, hook
    assert calls["batch_end_steps"] == list(range(1, 901))


def test_a_callback_with_per_step_hooks_gets_one_step_per_batch_by_default(compose_train, small_names, tmp_path):
    """The default steps_per_call=200 would hide per-step hooks: the engine plans one step per batch instead."""
    out = tmp_path / "hooks.json"
    train(compose_train(f"data.path={small_names}", "trainer.max_steps=50", *probe("hooks", "HookCounter", out)))
    calls = json.loads(out.read_text())["calls"]
    assert calls["on_before_optimizer_step"] == calls["on_after_backward"] == calls["on_train_batch_end"] == 50


def test_stock_model_checkpoint_every_n_train_steps_counts_optimizer_steps(compose_train, small_names, tmp_path):
    ckpt_dir = tmp_path / "every300"
    cfg = compose_train(
        f"data.path={small_names}",
        "trainer.max_steps=900",
        "trainer.val_check_interval=900",
        "+callbacks.every300._target_=pytorch_lightning.callbacks.ModelCheckpoint",
        f"+callbacks.every300.dirpath={ckpt_dir}",
        "+callbacks.every300.every_n_train_steps=300",
        "+callbacks.every300.save_top_k=-1",
        "+callbacks.every300.filename='{step}'",
    )
    train(cfg)
    assert sorted(p.name for p in ckpt_dir.glob("*.ckpt")) == ["step=300.ckpt", "step=600.ckpt", "step=900.ckpt"]
    assert torch.load(ckpt_dir / "step=300.ckpt", weights_only=True)["global_step"] == 300


def test_stock_learning_rate_monitor_logs_the_schedule_against_optimizer_steps(compose_train, small_names, tmp_path):
    cfg = compose_train(
        f"data.path={small_names}",
        "trainer.max_steps=100",
        "trainer.log_every_n_steps=10",
        "schedule=step",
        "+callbacks.lr_monitor._target_=pytorch_lightning.callbacks.LearningRateMonitor",
        "+callbacks.lr_monitor.logging_interval=step",
    )
    train(cfg)
    event_dir = Path(cfg.paths.output_dir) / "tensorboard"
    steps, values = read_scalar_steps(event_dir)["lr-SGD"], read_scalars(event_dir)["lr-SGD"]
    assert steps == list(range(9, 100, 10))  # Lightning logs at batch start of every 10th step (0-based)
    # step decay at half of max_steps: 0.1 before step 50, 0.01 from step 50 on, as the engine applies it
    assert values == pytest.approx([0.1 if s < 50 else 0.01 for s in steps])


@pytest.mark.slow
def test_early_stopping_and_max_time_stop_training(compose_train, small_names, tmp_path):
    early = train(
        compose_train(
            f"data.path={small_names}",
            "trainer.max_steps=2000",
            "trainer.val_check_interval=100",
            "optimizer.lr=1e-6",
            "schedule=constant",  # too small to improve: stops after `patience` validations
            "+callbacks.early._target_=pytorch_lightning.callbacks.EarlyStopping",
            "+callbacks.early.monitor=val/loss",
            "+callbacks.early.patience=1",
            "+callbacks.early.min_delta=0.01",
            f"paths.output_dir={tmp_path}/early",
        )
    )
    assert early["steps"] == 200
    timed = train(
        compose_train(
            f"data.path={small_names}",
            "trainer.max_steps=10000000",
            "trainer.max_time=00:00:00:02",
            f"paths.output_dir={tmp_path}/timed",
        )
    )
    assert 0 < timed["steps"] < 10000000  # stopped by the clock, at a batch end


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains_on_the_cpu(compose_train, small_names, precision):
    """bf16-mixed runs on CPUs and GPUs; 16-mixed on a CPU is Lightning's fp16 autocast without a gradient scaler."""
    summary = train(
        compose_train(
            f"data.path={small_names}", f"trainer.precision={precision}", "trainer.max_steps=200", "model=wavenet"
        )
    )
    assert summary["steps"] == 200 and summary["val_loss"] < summary["initial_loss"]


class CountingModule(pl.LightningModule):
    """A bare manual-optimization module that advances the step counter the engine's way, 3 times per batch."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.layer = torch.nn.Linear(1, 1)
        self.seen = []

    def training_step(self, batch, batch_idx):
        for _ in range(3):
            before = self.trainer.global_step
            step_counter(self.trainer)()
            self.seen.append(self.trainer.global_step - before)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(8, 1), batch_size=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_the_step_counter_line_still_advances_lightnings_global_step(tmp_path):
    """The one line that touches Lightning's loop state: if a release moves or renames it, this fails."""
    module = CountingModule()
    trainer = pl.Trainer(
        max_steps=12,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module)
    assert module.seen == [1] * 12 and trainer.global_step == 12  # 4 batches of 3 steps: max_steps counts steps


def test_no_lightning_internals_outside_the_engines_one_line():
    found = subprocess.run(
        [
            "grep",
            "-rnE",
            r"fit_loop|epoch_loop|optim_step_progress|\._leave|\._should_update|_logger_connector",
            str(ROOT / "src"),
        ],
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    code = [line for line in found if not re.search(r":\d+:\s*(#|\"|')", line) and "The one line" not in line]
    assert len(code) == 1 and "engine.py" in code[0] and "optim_step_progress.increment_by, 1)" in code[0], code


def test_divergence_is_a_non_finite_loss_or_ten_times_the_first_one():
    healthy = torch.tensor([27.0, 12.0, 4.0])  # lecture 3's badly initialised MLP starts near 27 and recovers
    assert divergence(healthy, 0, initial_loss=27.0) is None
    assert divergence(torch.tensor([3.3, 2.9]), 0, initial_loss=None) is None  # no first loss known: finiteness only
    jump = torch.tensor([3.0, DIVERGENCE_FACTOR * 3.3 + 1, 5.0])
    assert divergence(jump, 100, 3.3).startswith(
        f"the loss became {jump[1].item():.4g}, more than 10x the first step's 3.3, at step 101:"
    )
    nan = torch.tensor([3.0, 2.0, float("nan")])
    assert divergence(nan, 7, 3.3).startswith("the loss became nan at step 9: training diverged")
    assert "at step 7" in divergence(torch.tensor([float("inf")]), 7, None)


def test_an_lr_that_keeps_the_loss_finite_but_huge_is_a_divergence(compose_train, small_names):
    # SGD at lr=100 on the lecture MLP: the loss jumps to ~80x its first step's and stays finite (issue 21 item 8,
    # issue 19's failed sweep member); before, the run "finished" with val ~300 nats.
    with pytest.raises(TrainingDiverged, match=r"more than 10x the first step's .* training diverged"):
        train(compose_train("model=mlp", "optimizer.lr=100", f"data.path={small_names}"))
