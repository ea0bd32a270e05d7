"""Bounds and contracts (issue 36, item 7): every config key is read by something (a preset's typo is one line), a
population's memory budget and a run's num_samples are bounded, a misspelt argument or an unimportable class is one
line before the data and the model are built, and a user's model that breaks the model contract is one line naming
the shapes."""

import copy
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from conftest import CONFIG_DIR, TINY, compose_config, run_script
from makemore_lab.config_schema import POPULATION_RULES, TRAIN_RULES, check_model_contract, check_targets, validate
from makemore_lab.errors import UserError
from makemore_lab.models.mlp import MLP
from makemore_lab.models.rnn import RecurrentLM


def composed(*overrides: str):
    return compose_config("paths.output_dir=.", *overrides)


def one_line(result) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "preset, expected",
    [
        (
            "totally_unknown: 7\n",
            "error: unknown config key 'totally_unknown' (from an experiment preset or a config file?)",
        ),
        ("trainer:\n  bogus_flag: 1\n", "error: trainer.bogus_flag is not an argument of Lightning's Trainer"),
        ("trainer:\n  max_step: 100\n", "error: trainer.max_step is not an argument of Lightning's Trainer"),
        ("num_sample: 5\n", "error: unknown config key 'num_sample'"),
    ],
)
def test_a_users_preset_with_a_key_nothing_reads_is_one_line(tmp_path, preset, expected):
    (tmp_path / "configs" / "experiment").mkdir(parents=True)
    (tmp_path / "configs" / "experiment" / "mine.yaml").write_text("# @package _global_\n" + preset)
    run_dir = tmp_path / "run"
    result = run_script(
        "train.py", f"--config-dir={tmp_path / 'configs'}", "experiment=mine", *TINY, f"hydra.run.dir={run_dir}"
    )
    assert one_line(result).startswith(expected)
    assert not (run_dir / ".hydra").exists()  # refused before Hydra wrote the run dir


def test_keys_added_on_purpose_and_every_shipped_preset_pass():
    for experiment in sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml")):
        validate(composed(f"experiment={experiment}"), TRAIN_RULES)
    validate(composed("+population_max_memory_gb=2.5"), TRAIN_RULES)


def test_a_key_added_with_plus_on_the_command_line_is_the_users_own(tmp_path, small_names):
    result = run_script(
        "train.py",
        *TINY,
        f"data.path={small_names}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "+note=a-run-of-mine",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("value", [-1, 0, "abc", float("nan"), float("inf"), True])
def test_a_population_memory_budget_is_a_positive_number(value):
    cfg = composed()
    with open_dict(cfg):
        cfg.population_max_memory_gb = value
    for rules in (POPULATION_RULES, TRAIN_RULES):
        with pytest.raises(UserError, match=r"^population_max_memory_gb must be a positive number of GB"):
            validate(cfg, rules)


def test_a_runs_samples_are_bounded(tmp_path):
    result = run_script("train.py", "num_samples=100000000", f"hydra.run.dir={tmp_path / 'run'}")
    assert one_line(result).startswith("error: num_samples must be an integer in [0, 1,000,000]")
    assert "python sample.py num_samples=N" in result.stderr


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "+optimizer.momentun=0.9",
            "optimizer.momentun is not an argument of torch.optim.SGD (did you mean "
            "optimizer.momentum?); it takes: lr, momentum",
        ),
        (
            "+schedule.fator=0.5",
            "schedule.fator is not an argument of makemore_lab.schedules.step_decay (did you mean schedule.factor?)",
        ),
        (
            "+model.n_hiden=50",
            "model.n_hiden is not an argument of makemore_lab.models.mlp.MLP (did you mean model.n_hidden?)",
        ),
        (
            "+callbacks.last_checkpoint.every_second=5",
            "callbacks.last_checkpoint.every_second is not an argument of "
            "makemore_lab.callbacks.last_checkpoint.LastCheckpoint",
        ),
        (
            "model._target_=no_such_package.Model",
            "model._target_=no_such_package.Model cannot be imported "
            "(ModuleNotFoundError: No module named 'no_such_package')",
        ),
        (
            "model._target_=makemore_lab.models.mlp.NoSuchModel",
            "model._target_=makemore_lab.models.mlp.NoSuchModel cannot be imported",
        ),
        ("optimizer._target_=torch.optim.Sgd", "optimizer._target_=torch.optim.Sgd cannot be imported"),
        (
            "+logger.csv.flush_log_every=5",
            "logger.csv.flush_log_every is not an argument of pytorch_lightning.loggers.CSVLogger",
        ),
    ],
)
def test_a_misspelt_argument_or_an_unimportable_class_is_one_line_before_anything_is_built(override, expected):
    # data.path names no file: had the data been built first, its error would come first
    cfg = composed(override, "data.path=/no/such/file.txt", "logger=csv")
    with pytest.raises(UserError) as caught:
        check_targets(cfg)
    assert str(caught.value).startswith(expected) and "\n" not in str(caught.value), str(caught.value)


def test_every_shipped_option_passes_the_target_checks():
    for choice in [
        f"{group}={p.stem}"
        for group in ("model", "optimizer", "schedule", "trainer", "callbacks", "logger")
        for p in sorted((Path(CONFIG_DIR) / group).glob("*.yaml"))
    ]:
        if choice in ("logger=mlflow", "logger=wandb", "trainer=ddp"):
            continue  # need their extras or several devices to build; their keys are Lightning's own
        check_targets(composed(choice))


class WindowModelGivingEveryPosition(MLP):
    """A user's model that returns (B, T, V) where the contract says (B, V)."""

    def forward(self, idx):
        logits = super().forward(idx)
        return logits[:, None, :].expand(-1, idx.shape[1], -1)


class SequenceModelGivingTheLastPosition(RecurrentLM):
    """A user's sequence model that returns (B, V) for all_positions=True."""

    def forward(self, idx, all_positions: bool = False):
        return super().forward(idx)


def test_a_model_that_breaks_the_contract_is_one_line_naming_the_shapes():
    with pytest.raises(UserError) as caught:
        check_model_contract(WindowModelGivingEveryPosition(27, 3), "mine", 27, 3)
    assert str(caught.value).startswith(
        "model mine: forward(idx) on a (B, block_size) = (2, 3) batch returned shape "
        "(2, 3, 27), where the model contract"
    )
    assert "expects (2, 27)" in str(caught.value)
    with pytest.raises(
        UserError,
        match=r"forward\(idx, all_positions=True\) .* returned shape \(2, 27\), where the "
        r"model contract .* expects \(2, 5, 27\)",
    ):
        check_model_contract(SequenceModelGivingTheLastPosition(27, 5, n_embd=8, n_hidden=8), "mine", 27, 5)


def test_the_contract_check_leaves_the_model_and_the_random_state_as_they_were():
    torch.manual_seed(0)
    from makemore_lab.models.mlp import MLP as ShippedMLP

    net = ShippedMLP(27, 3, batchnorm=True)
    before = copy.deepcopy(net.state_dict())
    state = torch.random.get_rng_state()
    check_model_contract(net, "mlp_bn", 27, 3)
    assert net.training and torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BatchNorm's running stats too


def test_a_run_of_a_model_that_breaks_the_contract_is_one_line(compose_train, small_names):
    from makemore_lab.train import train

    cfg = compose_train(
        f"data.path={small_names}", "model._target_=test_config_contracts.WindowModelGivingEveryPosition"
    )
    with pytest.raises(
        UserError,
        match=r"^model mlp: forward\(idx\) on a \(B, block_size\) = \(2, 3\) batch returned "
        r"shape \(2, 3, 27\), where the model contract",
    ):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()  # refused before training
