"""Real (tiny) training runs through train(cfg), for every architecture, with real event files and checkpoints."""

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import CONFIG_DIR, read_scalar_events, read_scalars
from makemore_lab.checkpoint import load_trained_net
from makemore_lab.train import train

MODELS = sorted(p.stem for p in Path(CONFIG_DIR, "model").glob("*.yaml"))
SUMMARY_KEYS = {
    "model",
    "params",
    "vocab_size",
    "block_size",
    "train_examples",
    "val_examples",
    "test_examples",
    "steps",
    "initial_loss",
    "expected_initial_loss",
    "val_loss",
    "test_loss",
    "train_seconds",
    "steps_per_second",
}


def test_all_nine_architectures_have_a_config():
    assert MODELS == ["bigram", "bow", "gru", "lstm", "mlp", "mlp_bn", "rnn", "transformer", "wavenet"]


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_every_model_trains_and_writes_summary(compose_train, small_names, model):
    cfg = compose_train(f"model={model}", f"data.path={small_names}")
    summary = train(cfg)
    out = Path(cfg.paths.output_dir)
    written = json.loads((out / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert SUMMARY_KEYS <= written.keys()
    assert written["model"] == model and written["steps"] == 20
    assert written["expected_initial_loss"] == pytest.approx(math.log(written["vocab_size"]))
    assert math.isfinite(written["val_loss"]) and math.isfinite(written["test_loss"])
    assert written["train_examples"] + written["val_examples"] + written["test_examples"] == sum(
        len(n) + 1 for n in small_names.read_text().split()
    )
    assert (out / "checkpoints" / "last.ckpt").is_file()


def test_default_run_reads_back_from_tensorboard_and_checkpoint(compose_train, small_names):
    cfg = compose_train(f"data.path={small_names}", "trainer.max_steps=60", "trainer.log_every_n_steps=5")
    summary = train(cfg)
    out = Path(cfg.paths.output_dir)
    scalars = read_scalars(out / "tensorboard")
    assert len(scalars["train/loss"]) >= 10  # every 5 steps
    assert len(scalars["val/loss"]) == 6  # every 10 steps
    assert scalars["lr"][0] == pytest.approx(0.1) and scalars["lr"][-1] == pytest.approx(0.01)  # step decay
    assert scalars["test/loss"] == [pytest.approx(summary["test_loss"])]
    assert scalars["val/loss"][-1] == pytest.approx(summary["val_loss"], rel=1e-5)  # one val loss tag: no copies
    assert not [tag for tag in scalars if tag.startswith(("hparams/", "final/"))]
    assert summary["val_loss"] < summary["initial_loss"]  # it learned something in 60 steps

    net, vocab, meta = load_trained_net(out / "checkpoints" / "last.ckpt")
    assert meta["model_name"] == "mlp" and len(vocab) == summary["vocab_size"] and meta["block_size"] == 3
    assert sum(p.numel() for p in net.parameters()) == summary["params"]


@pytest.mark.slow
def test_same_seed_same_result_on_cpu(compose_train, small_names, tmp_path):
    first = train(compose_train(f"data.path={small_names}", "model=wavenet"))
    again = train(compose_train(f"data.path={small_names}", "model=wavenet", f"paths.output_dir={tmp_path}/again"))
    other = train(
        compose_train(f"data.path={small_names}", "model=wavenet", "seed=7", f"paths.output_dir={tmp_path}/b")
    )
    assert again["val_loss"] == pytest.approx(first["val_loss"], abs=1e-6)
    assert again["samples"] == first["samples"]
    assert other["val_loss"] != pytest.approx(first["val_loss"], abs=1e-6)


@pytest.mark.slow
def test_block_size_override_reaches_model_and_data(compose_train, small_names):
    summary = train(compose_train(f"data.path={small_names}", "model=mlp", "block_size=5"))
    assert summary["block_size"] == 5
    assert summary["params"] == 27 * 10 + (5 * 10 * 200 + 200) + (200 * 27 + 27)


def test_init_naive_starts_far_above_ln_v(compose_train, small_names):
    summary = train(compose_train(f"data.path={small_names}", "model.init=naive"))
    assert summary["initial_loss"] > 2 * summary["expected_initial_loss"]


@pytest.mark.parametrize(
    "schedule, multiplier",
    [
        ("constant", lambda s: 1.0),
        ("step", lambda s: 1.0 if s < 10 else 0.1),
        ("cosine", lambda s: 0.5 * (1 + math.cos(math.pi * s / 20))),
    ],
)
def test_schedules_reach_the_optimizer(compose_train, small_names, schedule, multiplier):
    """`lr` at step s is the rate the optimizer uses for step s (0-based), for every step of a 20-step run."""
    cfg = compose_train(f"data.path={small_names}", f"schedule={schedule}", "trainer.log_every_n_steps=1")
    train(cfg)
    lrs = read_scalars(Path(cfg.paths.output_dir) / "tensorboard")["lr"]
    assert lrs == pytest.approx([0.1 * multiplier(s) for s in range(1, 21)], rel=1e-5, abs=1e-9)


def test_checkpoint_holds_optimizer_state_for_resume(compose_train, small_names):
    cfg = compose_train(f"data.path={small_names}", "optimizer=adam")
    train(cfg)
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 20 and ckpt["optimizer_states"][0]["state"]


def test_max_params_refuses_a_bigger_model(compose_train, small_names):
    from makemore_lab.errors import OverParamBudget

    with pytest.raises(OverParamBudget, match="11,897 parameters, more than max_params=11,000"):
        train(compose_train(f"data.path={small_names}", "max_params=11000"))
    assert train(compose_train(f"data.path={small_names}", "max_params=11897"))["params"] == 11_897


def test_final_weights_best_reports_the_best_validation(compose_train, small_names):
    cfg = compose_train(f"data.path={small_names}", "final_weights=best", "trainer.max_steps=60", "optimizer.lr=0.5")
    summary = train(cfg)
    validations = read_scalar_events(Path(cfg.paths.output_dir) / "tensorboard")["val/loss"]
    best = min(validations, key=lambda event: event.value)
    assert summary["val_loss"] == pytest.approx(best.value, abs=1e-5)
    assert summary["final_weights_step"] in {best.step, best.step + 1}  # Lightning logs validation at step - 1
    assert summary["steps"] == 60


def test_final_weights_last_is_the_default(compose_train, small_names):
    summary = train(compose_train(f"data.path={small_names}"))
    assert summary["final_weights_step"] == summary["steps"] == 20
