"""Several optimizer steps per Lightning call (steps_per_call) must not change what training computes."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import read_scalar_steps
from makemore_lab.engine import StepPlan
from makemore_lab.errors import UserError
from makemore_lab.train import train

# 30 steps is not a multiple of 7: the last call must stop after 2 of its 7 steps.
RUN = ["trainer.max_steps=30", "trainer.val_check_interval=14", "trainer.log_every_n_steps=7", "schedule=cosine"]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.mark.parametrize("model", ["mlp", "wavenet"])  # wavenet: BatchNorm running statistics must match too
def test_blocked_and_plain_steps_give_identical_results(compose_train, small_names, tmp_path, model):
    plain = train(
        compose_train(
            f"data.path={small_names}", f"model={model}", *RUN, "steps_per_call=1", f"paths.output_dir={tmp_path}/plain"
        )
    )
    blocked = train(
        compose_train(
            f"data.path={small_names}",
            f"model={model}",
            *RUN,
            "steps_per_call=7",
            f"paths.output_dir={tmp_path}/blocked",
        )
    )
    assert plain["steps"] == blocked["steps"] == 30
    assert blocked["val_loss"] == plain["val_loss"] and blocked["initial_loss"] == plain["initial_loss"]
    assert blocked["samples"] == plain["samples"]
    a, b = final_weights(tmp_path / "plain"), final_weights(tmp_path / "blocked")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_logged_steps_are_optimizer_steps(compose_train, small_names):
    cfg = compose_train(f"data.path={small_names}", *RUN, "steps_per_call=7")
    train(cfg)
    steps = read_scalar_steps(Path(cfg.paths.output_dir) / "tensorboard")
    # validation cadence in optimizer steps, exactly; then the exact final val loss at the last step (final_report)
    assert steps["val/loss"] == [14, 28, 30]
    assert steps["train/loss"] == [7, 14, 21, 28, 30]  # every 7 steps, and the last (short) call
    assert steps["lr"] == steps["train/loss"]
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 30


def test_validation_cadence_is_exact_across_passes_over_the_data(compose_train, small_names):
    # small_names has ~3,400 training examples: ~106 minibatches a pass, so 300 steps cross passes twice.
    cfg = compose_train(
        f"data.path={small_names}",
        "trainer.max_steps=300",
        "trainer.val_check_interval=100",
        "trainer.log_every_n_steps=50",
    )
    train(cfg)
    steps = read_scalar_steps(Path(cfg.paths.output_dir) / "tensorboard")
    assert steps["val/loss"] == [100, 200, 300]
    assert steps["train/loss"] == [50, 100, 150, 200, 250, 300]


def plan(steps_per_call, callbacks=(), **trainer):
    trainer = {"val_check_interval": 2000, "log_every_n_steps": 50, **trainer}
    cfg = OmegaConf.create({"steps_per_call": steps_per_call, "trainer": trainer, "callbacks": {}})
    return StepPlan.from_config(cfg, list(callbacks)).steps_per_batch


def test_steps_per_batch_divides_validation_and_logging_intervals():
    assert plan(50) == 50
    assert plan(50, val_check_interval=30) == 10
    assert plan(50, log_every_n_steps=1) == 1
    assert plan(50, strategy="ddp") == 1
    with pytest.raises(UserError, match="accumulate_grad_batches"):
        plan(50, accumulate_grad_batches=2)
