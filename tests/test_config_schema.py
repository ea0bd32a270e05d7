"""Every documented key is checked before anything is built: a wrong type or value is one line naming the key."""

import pytest
from omegaconf import OmegaConf, open_dict

from conftest import compose_config, run_script
from makemore_lab.config_schema import SAMPLE_RULES, TRAIN_RULES, validate
from makemore_lab.errors import UserError

# A value each rule must refuse (by type or by range), and one it must accept.
BAD_AND_GOOD = {
    "seed": (-1, 7),
    "block_size": (0, 8),
    "steps_per_call": (True, 50),
    "num_samples": (-1, 0),
    "max_params": (0, 1000),
    "final_weights": ("worst", "best"),
    "ckpt_path": ("", "x.ckpt"),
    "threads": (0, 2),
    "optimizer.lr": (float("nan"), 0.3),
    "optimizer.weight_decay": (-0.1, 0.01),
    "optimizer.momentum": (1.5, 0.9),
    "optimizer.betas": ([0.9], [0.8, 0.9]),
    "optimizer.eps": (0, 1e-6),
    "trainer.max_steps": (2.5, 10),
    "trainer.val_check_interval": (0.5, 10),
    "trainer.log_every_n_steps": (0, 5),
    "trainer.gradient_clip_val": (-1, 1.0),
    "trainer.gradient_clip_algorithm": ("l2", "value"),
    "trainer.precision": ("fp8", "bf16-mixed"),
    "trainer.accumulate_grad_batches": (4, 1),
    "trainer.max_time": (12, "00:00:01:00"),
    "data.path": ("", "names.txt"),
    "data.batch_size": (0, 64),
    "data.eval_batch_size": (0, 128),
    "data.train_fraction": (1.0, 0.7),
    "data.val_fraction": (0, 0.2),
    "data.split_seed": (-3, 1),
    "data.train_on": ("chars", "items"),
    "data.seed": (-1, 5),
    "data.max_block_size": (0, 64),
    "data.max_bytes": (1.5, 10**9),
    "model.dropout": (1.0, 0.1),
    "model.init": ("xavier", "naive"),
}


def compose_train_cfg(*overrides):
    return compose_config("paths.output_dir=.", *overrides)


def test_every_rule_here_is_a_train_rule():  # tests/test_config_keys.py covers every rule, group by group
    assert set(BAD_AND_GOOD) <= {rule.key for rule in TRAIN_RULES}


@pytest.mark.parametrize("rule", [r for r in TRAIN_RULES if r.key in BAD_AND_GOOD], ids=lambda r: r.key)
def test_each_rule_refuses_a_bad_value_naming_the_key_and_accepts_a_good_one(rule):
    cfg = compose_train_cfg("model=transformer")  # has model.dropout; optimizer adamw has betas and eps
    bad, good = BAD_AND_GOOD[rule.key]
    with open_dict(cfg):
        OmegaConf.update(cfg, rule.key, bad, force_add=True)
    with pytest.raises(UserError) as caught:
        validate(cfg, [rule])
    assert str(caught.value).startswith(f"{rule.key} must be ")
    with open_dict(cfg):
        OmegaConf.update(cfg, rule.key, good, force_add=True)
    validate(cfg, [rule])


@pytest.mark.parametrize(
    "preset",
    [
        "",
        "model=wavenet",
        "model=transformer",
        "model=mlp_bn",
        "model=lstm",
        "experiment=lecture5_wavenet",
        "experiment=makemore_transformer_tuned",
        "debug=fast",
        "trainer=ddp",
    ],
)
def test_every_shipped_config_passes(preset):
    validate(compose_train_cfg(*filter(None, [preset])), TRAIN_RULES)


@pytest.mark.parametrize(
    "args, message",
    [
        (["seed=-1"], "seed must be an integer in [0, 2**32), got -1"),
        (["num_samples=-1"], "num_samples must be an integer in [0, 1,000,000] (printed at the end"),
        (["data.eval_batch_size=0"], "data.eval_batch_size must be a positive integer, got 0"),
        (["model=transformer", "optimizer.betas=[0.9]"], "optimizer.betas must be two numbers in [0, 1)"),
        (["model=mlp_bn", "data.batch_size=1"], "data.batch_size=1 cannot train mlp_bn: BatchNorm needs at least 2"),
        (
            ["final_weights=best", "trainer.val_check_interval=100"],
            "final_weights=best needs a validation before the end",
        ),
        (
            ["final_weights=best", "~callbacks.model_checkpoint"],
            "final_weights=best needs the model_checkpoint callback",
        ),
        (
            ["trainer.accumulate_grad_batches=2"],
            "trainer.accumulate_grad_batches must be 1 (raise data.batch_size instead)",
        ),
        (["trainer.gradient_clip_algorithm=l2"], "trainer.gradient_clip_algorithm must be 'norm' or 'value'"),
    ],
)
def test_values_that_used_to_fail_late_fail_before_training_in_one_line(tmp_path, args, message):
    result = run_script("train.py", *args, "trainer.max_steps=5", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {message}")
    assert not list((tmp_path / "run").glob("checkpoints/*"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["temperature=nan"], "temperature must be a non-negative number (0: always the likeliest character), got nan"),
        (["max_length=-1"], "max_length must be an integer in [1, 100,000], got -1"),
        (["num_samples=true"], "num_samples must be a positive integer, got True"),
        (["top_k=0"], "top_k must be a positive integer or null, got 0"),
    ],
)
def test_bad_sample_values_fail_in_one_line_before_loading(tmp_path, args, message):
    result = run_script("sample.py", f"ckpt_path={tmp_path / 'none.ckpt'}", *args)
    assert result.returncode == 2 and result.stderr.strip() == f"error: {message}"
    assert {rule.key for rule in SAMPLE_RULES} >= {"temperature", "max_length", "num_samples", "top_k"}
