"""What only a GPU can show (skipped without one): fp16 mixed precision with Lightning's gradient scaler, on both
engine paths, with clipping after unscaling. CI has no GPU; these ran on a lent H200 (see README, Performance)."""

import json

import pytest
import torch

from makemore_lab.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("steps_per_call", [1, 200])
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_trains_on_the_gpu(compose_train, small_names, precision, steps_per_call):
    summary = train(
        compose_train(
            f"data.path={small_names}",
            "trainer.accelerator=gpu",
            f"trainer.precision={precision}",
            f"steps_per_call={steps_per_call}",
            "trainer.max_steps=400",
            "model=wavenet",
        )
    )
    assert summary["steps"] == 400 and summary["val_loss"] < summary["initial_loss"] - 0.3


@pytest.mark.parametrize("steps_per_call", [1, 200])
def test_fp16_clipping_acts_on_unscaled_gradients(compose_train, small_names, tmp_path, steps_per_call):
    """With a loss scale of 2**16, clipping the scaled gradients to 0.5 would make the applied ones ~1e-5."""
    out = tmp_path / "grads.json"
    train(
        compose_train(
            f"data.path={small_names}",
            "trainer.accelerator=gpu",
            "trainer.precision=16-mixed",
            f"steps_per_call={steps_per_call}",
            "trainer.max_steps=30",
            "model.init=naive",
            "trainer.gradient_clip_val=0.5",
            "+callbacks.grads._target_=probes.GradientProbe",
            f"+callbacks.grads.out_file={out}",
        )
    )
    norms = [n for n in json.loads(out.read_text())["norms"] if n > 0]  # a step the scaler skipped applies nothing
    assert norms and max(norms) <= 0.5 * 1.01 and max(norms) > 0.4
