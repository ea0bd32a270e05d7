"""Every key of every group is declared: a wrong type or an out-of-range value of any of
them, or a Trainer flag / callback option the engine cannot honour, is one line naming the key, before training.

In-process (compose API + config_schema.validate) for the per-key matrix; the real entry points for what a
user runs.
"""

import copy
import inspect
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from conftest import CONFIG_DIR, NAMES, TINY, run_script
from exploding_model import DivergedInEvalMLP
from makemore_lab import lightning_flags
from makemore_lab.config_schema import TRAIN_RULES, validate
from makemore_lab.data import CharDataModule, Vocabulary
from makemore_lab.errors import TrainingDiverged, UserError
from makemore_lab.losses import EVAL_LOGIT_CELLS, split_loss
from makemore_lab.models.mlp import MLP
from makemore_lab.sampling import LOGIT_CELLS, SAMPLE_CHUNK, chunk_size, generate, stream
from makemore_lab.train import train

RULES = {rule.key: rule for rule in TRAIN_RULES}
GROUPS = ("model", "schedule", "optimizer", "trainer", "data")
EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))

# key -> (a value of the wrong type, a value of the right type out of its range). A refused Lightning flag has no
# range: both are values other than its neutral one.
WRONG_TYPE_AND_OUT_OF_RANGE = {
    "seed": ("abc", -1),
    "num_samples": (1.5, -1),
    "max_params": ("many", 0),
    "final_weights": (1, "worst"),
    "ckpt_path": (3, ""),
    "threads": ("many", 0),
    "steps_per_call": (True, 10**6),
    "block_size": ("x", 0),
    "optimizer": ("adamw", {"lr": 0.1}),
    "optimizer.lr": ("fast", -0.1),
    "optimizer.weight_decay": ("x", -0.1),
    "optimizer.momentum": ("x", 1.5),
    "optimizer.betas": (0.9, [0.9, 1.5]),
    "optimizer.eps": ("x", 0),
    "trainer": ("default", {"max_steps": 5}),
    "trainer.accelerator": (1, "tpu"),
    "trainer.strategy": (1, "ddp_spawn"),
    "trainer.devices": ("auto", 0),
    "trainer.num_nodes": ("x", 0),
    "trainer.precision": (1.5, "fp8"),
    "trainer.logger": (True, "tensorboard"),
    "trainer.callbacks": ("x", []),
    "trainer.fast_dev_run": ("x", True),
    "trainer.max_epochs": ("x", 3),
    "trainer.min_epochs": ("x", 1),
    "trainer.max_steps": ("x", 0),
    "trainer.min_steps": ("x", 5),
    "trainer.max_time": (12, ""),
    "trainer.limit_train_batches": ("x", 0.5),
    "trainer.limit_val_batches": ("x", 1.5),
    "trainer.limit_test_batches": ("x", 2),
    "trainer.limit_predict_batches": ("x", 2),
    "trainer.overfit_batches": ("x", 2),
    "trainer.val_check_interval": ("x", 0.5),
    "trainer.check_val_every_n_epoch": ("x", 1),
    "trainer.num_sanity_val_steps": ("x", -2),
    "trainer.log_every_n_steps": ("x", 0),
    "trainer.enable_checkpointing": ("x", 1),
    "trainer.enable_progress_bar": ("x", 0),
    "trainer.enable_model_summary": ("x", 2),
    "trainer.accumulate_grad_batches": ("x", 4),
    "trainer.gradient_clip_val": ("x", -1.0),
    "trainer.gradient_clip_algorithm": (1, "l2"),
    "trainer.deterministic": (1.5, "always"),
    "trainer.benchmark": ("x", 1),
    "trainer.inference_mode": ("x", 0),
    "trainer.use_distributed_sampler": ("x", True),
    "trainer.profiler": (1, "pytorch"),
    "trainer.detect_anomaly": ("x", 1),
    "trainer.barebones": ("x", True),
    "trainer.plugins": (1, ["x"]),
    "trainer.sync_batchnorm": ("x", 1),
    "trainer.reload_dataloaders_every_n_epochs": ("x", 1),
    "trainer.default_root_dir": (3, ""),
    "trainer.enable_autolog_hparams": ("x", 1),
    "trainer.model_registry": (1, "hub"),
    "model": ("mlp", {"n_embd": 10}),
    "model_name": (3, ""),
    "model.n_embd": ("ten", 0),
    "model.n_hidden": (1.5, -5),
    "model.n_layers": ("x", 0),
    "model.n_layer": ("x", 0),
    "model.n_head": ("x", 0),
    "model.cell": (1, "transformer"),
    "model.batchnorm": ("yes", 1),
    "model.output_batchnorm": ("yes", 0),
    "model.bn_momentum": ("x", 1.5),
    "model.gain": ("x", -1.0),
    "model.dropout": ("x", 1.0),
    "model.init": (1, "xavier"),
    "schedule": ("cosine", {"at": 0.5}),
    "schedule.at": ("abc", 1.5),
    "schedule.factor": ("abc", -0.1),
    "schedule.min_factor": ("x", 2.0),
    "schedule.warmup_steps": (1.5, -1),
    "data": ("names", {"path": None}),
    "data.path": (3, ""),
    "data.batch_size": ("x", 0),
    "data.eval_batch_size": ("x", 0),
    "data.train_fraction": ("x", 1.0),
    "data.val_fraction": ("x", 0),
    "data.split_seed": ("x", -3),
    "data.train_on": (1, "chars"),
    "data.seed": ("x", 2**32),
    "data.max_block_size": ("x", 0),
    "data.max_bytes": (1.5, 0),
}


@pytest.fixture(scope="module", autouse=True)
def hydra_once():
    """One Hydra initialisation for the module's ~100 compositions (each re-initialisation rescans the configs)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        yield
    GlobalHydra.instance().clear()


def composed(*overrides: str):
    return compose("train", overrides=["paths.output_dir=.", *overrides])


@pytest.fixture(scope="module")
def default_cfg():
    return composed()


def config_keys(path: Path, group: str) -> set[str]:
    """The dotted keys a config file sets (a `_global_` file's as written, a group file's under its group)."""
    text = path.read_text()
    content = yaml.safe_load(text) or {}
    content.pop("defaults", None)
    prefix = "" if "@package _global_" in text else f"{group}."

    def walk(node, at):
        for key, value in node.items():
            if key in ("_target_", "_partial_") or value in [f"${{{source}}}" for source in RULES]:
                continue  # an interpolation (data.block_size: ${block_size}) is checked under the key it names
            if isinstance(value, dict) and f"{at}{key}" not in RULES:
                yield from walk(value, f"{at}{key}.")
            else:
                yield f"{at}{key}"

    return set(walk(content, prefix))


def test_every_rule_has_its_wrong_type_and_out_of_range_case():
    assert set(RULES) == set(WRONG_TYPE_AND_OUT_OF_RANGE)


@pytest.mark.parametrize("group", GROUPS)
def test_every_key_of_every_config_file_has_a_rule(group):
    files = sorted((Path(CONFIG_DIR) / group).glob("*.yaml"))
    assert files
    for path in files:
        undeclared = config_keys(path, group) - set(RULES)
        assert not undeclared, f"{path.name} sets keys without a rule in config_schema.py: {sorted(undeclared)}"


def test_every_lightning_trainer_argument_is_declared():
    arguments = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}
    assert {f"trainer.{name}" for name in arguments} <= set(RULES)


@pytest.mark.parametrize("key", sorted(WRONG_TYPE_AND_OUT_OF_RANGE))
def test_a_wrong_type_and_an_out_of_range_value_are_one_line_naming_the_key(key, default_cfg):
    cfg = copy.deepcopy(default_cfg)
    for value in WRONG_TYPE_AND_OUT_OF_RANGE[key]:
        with open_dict(cfg):
            OmegaConf.update(cfg, key, value, force_add=True, merge=False)
        with pytest.raises(UserError) as caught:
            validate(cfg, TRAIN_RULES)
        message = str(caught.value)
        assert message.startswith(f"{key} must be ") and "\n" not in message, message


@pytest.mark.parametrize("key", [rule.key for rule in TRAIN_RULES if rule.required])
def test_a_required_key_removed_is_one_line_naming_it(key, default_cfg):
    cfg = copy.deepcopy(default_cfg)
    parent, _, leaf = key.rpartition(".")
    with open_dict(cfg):
        (OmegaConf.select(cfg, parent) if parent else cfg).pop(leaf)
    with pytest.raises(UserError, match=rf"^{key} must be .*; it is missing"):
        validate(cfg, TRAIN_RULES)


@pytest.mark.parametrize(
    "choice",
    [
        f"{group}={path.stem}"
        for group in ("model", "schedule", "optimizer", "trainer")
        for path in sorted((Path(CONFIG_DIR) / group).glob("*.yaml"))
    ]
    + [f"experiment={name}" for name in EXPERIMENTS]
    + ["~schedule"],
)
def test_every_shipped_option_passes_every_rule(choice):
    cfg = composed(choice)
    validate(cfg, TRAIN_RULES)
    lightning_flags.check_devices(cfg.trainer)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_debug_fast_wins_over_every_experiment_preset(experiment):
    debug_trainer = composed("trainer=debug").trainer
    cfg = composed(f"experiment={experiment}", "debug=fast")
    for key in ("max_steps", "val_check_interval", "limit_val_batches", "accelerator", "detect_anomaly"):
        assert cfg.trainer[key] == debug_trainer[key], key
    assert cfg.trainer.max_steps == 20 and set(cfg.callbacks) == {"progress_bar"}  # only the step bar


# Item 6: which strategy/devices pairs train. More than one process without DDP would never average gradients.
@pytest.mark.parametrize(
    "strategy, devices, num_nodes, ok",
    [
        ("auto", 1, 1, True),
        (None, 1, 1, True),
        ("ddp", 1, 1, True),
        ("ddp", 2, 1, True),
        ("ddp", 4, 2, True),
        ("auto", 2, 1, False),
        (None, 8, 1, False),
        ("auto", 1, 2, False),
    ],
)
def test_more_than_one_process_needs_ddp(strategy, devices, num_nodes, ok):
    trainer = OmegaConf.create({"strategy": strategy, "devices": devices, "num_nodes": num_nodes})
    if ok:
        lightning_flags.check_devices(trainer)
    else:
        with pytest.raises(UserError, match=r"^trainer\.(devices|num_nodes)=\d+ needs trainer.strategy=ddp"):
            lightning_flags.check_devices(trainer)


@pytest.mark.parametrize(
    "target, options",
    [
        ("pytorch_lightning.callbacks.ModelCheckpoint", {"train_time_interval": "00:00:10"}),
        ("pytorch_lightning.callbacks.ModelCheckpoint", {"every_n_epochs": 2}),
        ("pytorch_lightning.callbacks.ModelCheckpoint", {"save_on_train_epoch_end": True}),
        ("pytorch_lightning.callbacks.EarlyStopping", {"monitor": "val/loss", "check_on_train_epoch_end": True}),
        ("pytorch_lightning.callbacks.StochasticWeightAveraging", {"swa_lrs": 0.01}),
        ("pytorch_lightning.callbacks.GradientAccumulationScheduler", {"scheduling": {0: 2}}),
        ("pytorch_lightning.callbacks.LearningRateFinder", {}),
        ("builtins.dict", {}),
    ],
)
def test_a_stock_callback_option_that_never_fires_is_refused(target, options):
    nodes = {"extra": OmegaConf.create({"_target_": target, **options})}
    with pytest.raises(UserError, match=r"^callbacks\.extra"):
        lightning_flags.check_callbacks(nodes)


def test_the_shipped_callbacks_pass():
    cfg = composed("callbacks=default")
    lightning_flags.check_callbacks({name: node for name, node in cfg.callbacks.items() if node})


# Through the real entry point: each used to be a traceback (some mid-training), a multi-line Hydra error, an
# error that did not name the key, or a run that trained wrong silently (trainer.devices=2).
@pytest.mark.parametrize(
    "args, message",
    [
        (["model=mpl"], "error: In 'train': Could not find 'model/mpl'; available: bigram, bow, gru, lstm, mlp,"),
        (["foo=1"], "error: Could not override 'foo': Key 'foo' is not in struct; To append to your config use +foo=1"),
        (["model=null"], "error: Config group override must be a string or a list. Got NoneType"),
    ],
)
def test_hydra_errors_are_one_line(tmp_path, args, message):
    result = run_script("train.py", *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and result.stderr.strip().startswith(message) and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["schedule.factor=abc"], "schedule.factor must be a number in [0, 1]"),  # was a TypeError mid-training
        (["~model"], "model must be a model option, e.g. model=mlp"),
        (["trainer.devices=2"], "trainer.devices=2 needs trainer.strategy=ddp"),  # trained two unsynced ranks
        (["trainer=ddp", "trainer.strategy=ddp_spawn"], "trainer.strategy must be 'auto' or 'ddp'"),
        (
            ["final_weights=best", "+trainer.limit_val_batches=0"],
            "final_weights=best needs a validation",
        ),  # after training
    ],
)
def test_bad_keys_fail_before_training_in_one_line(tmp_path, small_names, args, message):
    result = run_script("train.py", *TINY, f"data.path={small_names}", *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {message}")
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("summary.json"))


def test_a_misspelt_sample_key_is_one_line(tmp_path):
    result = run_script("sample.py", f"ckpt_path={tmp_path / 'x.ckpt'}", "tempreature=0.5")
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: Could not override 'tempreature': Key 'tempreature' is not in struct; "
        "To append to your config use +tempreature=0.5"
    )


# Item 8: divergence and bounds.
def test_weights_diverged_behind_a_finite_training_loss_end_in_one_divergence_line(compose_train, small_names):
    cfg = compose_train(
        f"data.path={small_names}", "model._target_=exploding_model.DivergedInEvalMLP", "callbacks=none", "logger=none"
    )
    with pytest.raises(
        TrainingDiverged,
        match=r"^training diverged: the final train_loss=nan, val_loss=nan, test_loss=nan .*last\.ckpt$",
    ):
        train(cfg)  # was: torch.multinomial's RuntimeError while sampling, after the losses
    assert not (Path(cfg.paths.output_dir) / "summary.json").exists()
    assert (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").is_file()


def test_a_nan_under_anomaly_detection_is_the_divergence_line(compose_train, small_names):
    cfg = compose_train(
        f"data.path={small_names}",
        "model._target_=exploding_model.ExplodingMLP",
        "+model.explode_at_call=5",
        "+trainer.detect_anomaly=true",
        "callbacks=none",
        "logger=none",
    )
    with pytest.raises(
        TrainingDiverged,
        match=r"^anomaly detection: Function '\w+' returned nan values .* at step 5: "
        r"training diverged",
    ):
        train(cfg)  # was: torch's anomaly-mode RuntimeError traceback


@pytest.fixture(scope="module")
def names_model():
    vocab = Vocabulary.from_items(NAMES.read_text().split())
    return MLP(len(vocab), 3), vocab


def test_temperature_zero_is_greedy_and_a_tiny_temperature_tends_to_it(names_model):
    net, vocab = names_model
    seeded = lambda: torch.Generator().manual_seed(0)
    greedy = generate(net, vocab, 4, 3, seeded(), temperature=0, max_length=20)
    assert greedy == generate(net, vocab, 4, 3, seeded(), top_k=1, max_length=20) and len(set(greedy)) == 1
    assert generate(net, vocab, 4, 3, seeded(), temperature=1e-30, max_length=20) == greedy  # was: NaN probabilities


def test_many_samples_stream_in_bounded_chunks(names_model):
    net, vocab = names_model
    rows = []
    hook = net.register_forward_hook(lambda module, args, out: rows.append(len(out)))
    try:
        items = stream(net, vocab, 2 * SAMPLE_CHUNK + 3, 3, torch.Generator().manual_seed(0), max_length=3)
        assert sum(1 for _ in items) == 2 * SAMPLE_CHUNK + 3
    finally:
        hook.remove()
    assert max(rows) == SAMPLE_CHUNK  # never num_samples x max_length at once
    assert chunk_size(10**8, 100_000) * 100_000 <= LOGIT_CELLS


def test_a_model_with_infinite_logits_cannot_be_sampled_and_says_so(names_model):
    _, vocab = names_model
    net = DivergedInEvalMLP(len(vocab), 3)
    with pytest.raises(TrainingDiverged, match="logits are not finite"):
        generate(net, vocab, 3, 3, torch.Generator().manual_seed(0))


def test_a_large_vocabulary_is_evaluated_in_bounded_chunks_with_the_same_loss(tmp_path):
    # 5,000 distinct characters: a batch of 4,096 distinct contexts' logits would be 20M floats, above
    # EVAL_LOGIT_CELLS (20,000 items: the val split's 2,000 have over 4,096 distinct contexts).
    chars = [chr(0x4E00 + i) for i in range(5000)]
    path = tmp_path / "wide.txt"
    path.write_text("\n".join("".join(chars[(7 * i + j) % 5000] for j in range(3)) for i in range(20_000)) + "\n")
    big, small = (CharDataModule(path=str(path), block_size=3, eval_batch_size=size) for size in (4096, 256))
    assert big.vocab_size == 5001 and 4096 * big.vocab_size > EVAL_LOGIT_CELLS
    net = MLP(big.vocab_size, 3)
    cells = []
    hook = net.lm_head.register_forward_hook(lambda module, args, out: cells.append(out.numel()))
    try:
        chunked = split_loss(net, big, "val")
    finally:
        hook.remove()
    assert max(cells) <= EVAL_LOGIT_CELLS and len(cells) > len(big.eval_batches("val"))  # batches ran in chunks
    assert chunked == pytest.approx(split_loss(net, small, "val"), rel=1e-6)


def test_a_block_size_above_the_bound_is_one_line(small_names):
    with pytest.raises(UserError, match=r"^block_size=100,000 is above data.max_block_size=256"):
        CharDataModule(path=str(small_names), block_size=100_000)  # was: gigabytes per training call


def test_fractions_that_empty_a_split_name_the_fraction_keys(small_names):
    with pytest.raises(
        UserError,
        match=r"^data.train_fraction=0.001 and data.val_fraction=0.1 leave the train split "
        r"empty: data file .* has 600 items",
    ):
        CharDataModule(path=str(small_names), train_fraction=0.001)  # was: "... too few", blaming the data
