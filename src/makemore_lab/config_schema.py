"""The documented config keys, their types and allowed values, declared once; `validate` checks a composed config.

Every entry point calls `validate_*` before it builds anything, so a wrong value of any key listed here fails
in one line naming the key (`error: trainer.max_steps must be a positive integer, got 0`) instead of a traceback
from deep inside torch or Lightning, or a silent misbehaviour after the run. A key absent from the config (an
optimizer without `momentum`, say) is not checked; a key present must obey its rule.
"""

import difflib
import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from makemore_lab.errors import UserError

_ABSENT = object()


@dataclass(frozen=True)
class Rule:
    """`key` (dotted path) must be `what`; `ok(value)` says whether it is. None passes when `nullable`."""

    key: str
    what: str
    ok: Callable[[Any], bool]
    nullable: bool = False
    required: bool = False  # absent (`~trainer.max_steps`, `~model`) is refused too, not skipped


# Value predicates. bool is an int to Python but never a number here (`steps=true` is a typo, not 1).
def integer(low: int | None = None, high: int | None = None) -> Callable[[Any], bool]:
    return lambda v: (
        isinstance(v, int) and not isinstance(v, bool) and (low is None or v >= low) and (high is None or v <= high)
    )


def number(above: float | None = None, at_least: float | None = None, below: float | None = None):
    def ok(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return (above is None or v > above) and (at_least is None or v >= at_least) and (below is None or v < below)

    return ok


def one_of(*choices) -> Callable[[Any], bool]:
    return lambda v: not isinstance(v, bool) and v in choices


def pair_of(predicate) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (list, tuple, ListConfig)) and len(v) == 2 and all(predicate(x) for x in v)


text = lambda v: isinstance(v, str) and v != ""
boolean = lambda v: isinstance(v, bool)
group_option = lambda v: isinstance(v, DictConfig) and "_target_" in v
positive_int, non_negative_int = integer(low=1), integer(low=0)
fraction = number(above=0, below=1)

PRECISIONS = ("32", "32-true", "bf16-mixed", "16-mixed", "64", "64-true", "bf16-true", "16-true", 32, 64, 16)

MAX_STEPS_PER_CALL = 10_000
MAX_SAMPLE_LENGTH = 100_000  # characters of one generated item: one model call each
MAX_TRAIN_SAMPLES = 1_000_000  # a run's printed samples, kept in summary.json (~8 MB at most); sample.py streams more

# What the data module takes: also checked by CharData itself (data/corpus.py), which eval.py and sample.py build
# from a checkpoint's saved settings without a config.
DATA_RULES = [
    Rule("block_size", "a positive integer (or null: longest item + 1)", positive_int, nullable=True),
    # Bounded: a Lightning batch gathers all its minibatches at once; beyond ~10,000 nothing is amortised any more.
    Rule("steps_per_call", f"an integer in [1, {MAX_STEPS_PER_CALL:,}]", integer(1, MAX_STEPS_PER_CALL)),
    Rule("data.path", "a file path or null (the shipped names.txt)", text, nullable=True),
    Rule("data.batch_size", "a positive integer", positive_int),
    Rule("data.eval_batch_size", "a positive integer", positive_int),
    Rule("data.train_fraction", "a number strictly between 0 and 1", fraction),
    Rule("data.val_fraction", "a number strictly between 0 and 1", fraction),
    Rule("data.split_seed", "a non-negative integer", non_negative_int),
    Rule("data.train_on", "'windows' or 'items'", one_of("windows", "items")),
    Rule("data.seed", "an integer in [0, 2**32)", integer(0, 2**32 - 1)),
    Rule("data.max_block_size", "a positive integer", positive_int),
    Rule("data.max_bytes", "a positive integer (bytes)", positive_int),
]

# Each model option's arguments (configs/model/*.yaml); a key applies to every model that takes it.
MODEL_RULES = [
    Rule("model", "a model option, e.g. model=mlp (configs/model/)", group_option, required=True),
    Rule("model_name", "a name (set by the model option)", text, required=True),
    Rule("model.n_embd", "a positive integer", positive_int),
    Rule("model.n_hidden", "a positive integer", positive_int),
    Rule("model.n_layers", "a positive integer", positive_int),
    Rule("model.n_layer", "a positive integer", positive_int),
    Rule("model.n_head", "a positive integer (dividing model.n_embd)", positive_int),
    Rule("model.cell", "'rnn', 'gru' or 'lstm'", one_of("rnn", "gru", "lstm")),
    Rule("model.batchnorm", "true or false", boolean),
    Rule("model.output_batchnorm", "true or false", boolean),
    Rule("model.bn_momentum", "a number in (0, 1]", number(above=0, below=1 + 1e-12)),
    Rule("model.gain", "a positive number", number(above=0)),
    Rule("model.dropout", "a number in [0, 1)", number(at_least=0, below=1)),
    Rule("model.init", "one of kaiming, naive, torch", one_of("kaiming", "naive", "torch")),
]

unit_interval = number(at_least=0, below=1 + 1e-12)  # [0, 1]
# The schedules' arguments (configs/schedule/*.yaml): a multiplier of the lr is never negative, never above 1.
SCHEDULE_RULES = [
    Rule("schedule", "a schedule option (e.g. schedule=cosine) or null (constant lr)", group_option, nullable=True),
    Rule("schedule.at", "a fraction of trainer.max_steps in [0, 1]", unit_interval),
    Rule("schedule.factor", "a number in [0, 1] (the lr multiplier after schedule.at)", unit_interval),
    Rule("schedule.min_factor", "a number in [0, 1] (the last step's lr multiplier)", unit_interval),
    Rule("schedule.warmup_steps", "a non-negative integer", non_negative_int),
]

OPTIMIZER_RULES = [
    Rule("optimizer", "an optimizer option, e.g. optimizer=adamw (configs/optimizer/)", group_option, required=True),
    Rule("optimizer.lr", "a positive number below 1e30", number(above=0, below=1e30)),
    Rule("optimizer.weight_decay", "a non-negative number", number(at_least=0)),
    Rule("optimizer.momentum", "a number in [0, 1)", number(at_least=0, below=1)),
    Rule("optimizer.betas", "two numbers in [0, 1), e.g. [0.9, 0.99]", pair_of(number(at_least=0, below=1))),
    Rule("optimizer.eps", "a positive number", number(above=0)),
]


def unsupported(key: str, default, why: str) -> Rule:
    """A Lightning flag this package cannot honour: only its neutral value (or null) passes, the reason is the message."""
    same = lambda v: v == default and isinstance(v, bool) == isinstance(default, bool)
    return Rule(key, f"{default!r} (or null): {why}", same, nullable=True)


EPOCHS_NEVER_END = "the minibatch stream never ends an epoch; count in optimizer steps (trainer.max_steps)"
SINGLE_RUN_STRATEGIES = ("auto", "ddp")
# Every argument of Lightning's Trainer (tests/test_config_keys.py fails when a Lightning release adds one);
# docs/reliability_keys.md has the table: each flag works as Lightning documents, or is refused here, and why.
TRAINER_FLAG_RULES = [
    Rule("trainer", "a trainer option, e.g. trainer=default (configs/trainer/)", group_option, required=True),
    Rule("trainer.accelerator", "one of auto, cpu, gpu, cuda, mps", one_of("auto", "cpu", "gpu", "cuda", "mps")),
    Rule(
        "trainer.strategy",
        "'auto' or 'ddp' (trainer=ddp); ddp_spawn, fsdp, deepspeed and the others are not "
        "supported (the engine steps the optimizer itself; only DDP's per-batch gradient sync fits it)",
        one_of(*SINGLE_RUN_STRATEGIES),
        nullable=True,
    ),
    Rule("trainer.devices", "a positive number of devices (more than 1 with trainer=ddp)", positive_int),
    Rule("trainer.num_nodes", "a positive integer (more than 1 with trainer=ddp)", positive_int),
    Rule("trainer.precision", f"one of {', '.join(map(str, PRECISIONS[:8]))}", one_of(*PRECISIONS), nullable=True),
    unsupported("trainer.logger", None, "choose loggers with logger=<option>"),
    unsupported("trainer.callbacks", None, "choose callbacks with callbacks=<option> or callbacks.<name>"),
    unsupported("trainer.fast_dev_run", False, "use debug=fast (a few steps that still checkpoint and report)"),
    Rule(
        "trainer.max_epochs", f"-1 (or null): {EPOCHS_NEVER_END}", lambda v: v == -1 and type(v) is int, nullable=True
    ),
    unsupported("trainer.min_epochs", None, EPOCHS_NEVER_END),
    Rule("trainer.max_steps", "a positive integer", positive_int, required=True),
    unsupported("trainer.min_steps", None, "training always runs to trainer.max_steps unless stopped"),
    Rule("trainer.max_time", "null or a duration 'DD:HH:MM:SS'", text, nullable=True),
    unsupported(
        "trainer.limit_train_batches",
        None,
        "a Lightning batch holds steps_per_call optimizer steps: set trainer.max_steps",
    ),
    Rule(
        "trainer.limit_val_batches",
        "a non-negative number of validation batches (a fraction of a small split can "
        "round to none, which Lightning refuses mid-run)",
        non_negative_int,
        nullable=True,
    ),
    unsupported("trainer.limit_test_batches", None, "the final report scores the whole test split itself"),
    unsupported("trainer.limit_predict_batches", None, "nothing is predicted through the Trainer"),
    unsupported(
        "trainer.overfit_batches",
        0,
        "the minibatch stream is drawn per step; to overfit on purpose train on a small file (data.path=...)",
    ),
    Rule("trainer.val_check_interval", "a positive number of optimizer steps", positive_int, required=True),
    unsupported("trainer.check_val_every_n_epoch", None, EPOCHS_NEVER_END),
    Rule("trainer.num_sanity_val_steps", "a non-negative integer (or -1: the whole split)", integer(low=-1)),
    Rule("trainer.log_every_n_steps", "a positive number of optimizer steps", positive_int, required=True),
    Rule("trainer.enable_checkpointing", "true or false", boolean, nullable=True),
    Rule("trainer.enable_progress_bar", "true or false", boolean, nullable=True),
    Rule("trainer.enable_model_summary", "true or false", boolean, nullable=True),
    Rule("trainer.accumulate_grad_batches", "1 (raise data.batch_size instead)", one_of(1)),
    Rule("trainer.gradient_clip_val", "a positive number or null", number(above=0), nullable=True),
    Rule("trainer.gradient_clip_algorithm", "'norm' or 'value'", one_of("norm", "value"), nullable=True),
    Rule("trainer.deterministic", "true, false or 'warn'", lambda v: boolean(v) or v == "warn", nullable=True),
    Rule("trainer.benchmark", "true or false", boolean, nullable=True),
    Rule("trainer.inference_mode", "true or false", boolean),
    unsupported("trainer.use_distributed_sampler", False, "the minibatch stream draws per rank itself"),
    Rule("trainer.profiler", "null, 'simple' or 'advanced'", one_of("simple", "advanced"), nullable=True),
    Rule("trainer.detect_anomaly", "true or false", boolean),
    unsupported("trainer.barebones", False, "the run's checkpoints, logs and report need the callbacks and loggers"),
    unsupported("trainer.plugins", None, "precision and environments come from trainer.precision and the launcher"),
    Rule("trainer.sync_batchnorm", "true or false", boolean),
    unsupported("trainer.reload_dataloaders_every_n_epochs", 0, EPOCHS_NEVER_END),
    Rule("trainer.default_root_dir", "a directory path", text, nullable=True),
    Rule("trainer.enable_autolog_hparams", "true or false", boolean),
    unsupported("trainer.model_registry", None, "checkpoints stay in the run dir"),
]

# A population's own settings (the population launcher checks them once, before any member is built; a member
# checks them too, as part of TRAIN_RULES).
POPULATION_RULES = [
    Rule(
        "population_max_memory_gb",
        "a positive number of GB (or null: measured from the machine)",
        number(above=0),
        nullable=True,
    ),
]


class Rules(list):
    """A list of per-key Rules, and `checks`: rules over several keys (functions of the config that raise UserError),
    which validate runs after them."""

    def __init__(self, rules, checks=()):
        super().__init__(rules)
        self.checks = tuple(checks)


TRAIN_RULES = Rules(
    [
        Rule("seed", "an integer in [0, 2**32)", integer(0, 2**32 - 1)),
        Rule(
            "num_samples",
            f"an integer in [0, {MAX_TRAIN_SAMPLES:,}] (printed at the end and kept in summary.json; "
            "for more: python sample.py num_samples=N, which streams them)",
            integer(0, MAX_TRAIN_SAMPLES),
        ),
        Rule("max_params", "a positive integer or null", positive_int, nullable=True),
        Rule("final_weights", "'last' or 'best'", one_of("last", "best")),
        Rule("ckpt_path", "a checkpoint path or null", text, nullable=True),
        Rule("threads", "'auto' or a positive integer", lambda v: v == "auto" or positive_int(v)),
        *OPTIMIZER_RULES,
        *TRAINER_FLAG_RULES,
        *MODEL_RULES,
        *SCHEDULE_RULES,
        Rule("data", "a data option, e.g. data=names (configs/data/)", group_option, required=True),
        *DATA_RULES,
    ],
    checks=[
        lambda cfg: validate(cfg, POPULATION_RULES),
        lambda cfg: check_known_keys(cfg),  # keys no rule, option or model reads: a typo, in a preset or elsewhere
    ],
)

SAMPLE_RULES = [
    Rule("ckpt_path", "a checkpoint path", text),
    Rule("num_samples", "a positive integer", positive_int),
    Rule("seed", "an integer in [0, 2**32)", integer(0, 2**32 - 1)),
    Rule("temperature", "a non-negative number (0: always the likeliest character)", number(at_least=0)),
    Rule("top_k", "a positive integer or null", positive_int, nullable=True),
    Rule("max_length", f"an integer in [1, {MAX_SAMPLE_LENGTH:,}]", integer(1, MAX_SAMPLE_LENGTH)),
]

EVAL_RULES = [
    Rule("ckpt_path", "a checkpoint path", text),
    Rule("data.path", "a file path or null (the checkpoint's own data)", text, nullable=True),
]


def check(key: str, value, what: str, ok: Callable[[Any], bool]):
    """`value` if `ok(value)`, else the one-line UserError every rule gives: "<key> must be <what>, got <value>".
    For settings outside the Hydra config's documented keys (a callback's arguments), with the same predicates."""
    if not ok(value):
        shown = OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
        raise UserError(f"{key} must be {what}, got {shown!r}")
    return value


def validate(cfg: DictConfig, rules: list) -> None:
    """Raise UserError for the first key whose value breaks its rule, then run the rules' checks (Rules.checks)."""
    for rule in rules:
        value = OmegaConf.select(cfg, rule.key, default=_ABSENT, throw_on_missing=False)
        if value is _ABSENT and rule.required:
            raise UserError(f"{rule.key} must be {rule.what}; it is missing (removed with ~{rule.key}?)")
        if value is _ABSENT or (value is None and rule.nullable):
            continue
        check(rule.key, value, rule.what, rule.ok)
    for check_keys in getattr(rules, "checks", ()):
        check_keys(cfg)


# Top-level keys a train config may hold beyond train.yaml's own and its groups: a preset's note on where its numbers
# come from (configs/experiment/*.yaml), and the population's settings. Anything else is a typo that would do nothing.
EXTRA_TOP_LEVEL_KEYS = {"reference", "hydra", *(rule.key for rule in POPULATION_RULES)}


@functools.cache
def top_level_keys() -> frozenset[str]:
    """train.yaml's own keys and config groups (the keys its options fill), and EXTRA_TOP_LEVEL_KEYS."""
    from makemore_lab.configs import CONFIG_DIR

    primary = OmegaConf.load(Path(CONFIG_DIR) / "train.yaml")
    groups = {next(iter(entry)) for entry in primary.defaults if isinstance(entry, DictConfig)}
    return frozenset({*primary.keys(), *groups, *EXTRA_TOP_LEVEL_KEYS} - {"defaults"})


def typed_additions() -> set[str]:
    """Keys the user added on purpose on the command line (`+key=value`): theirs to add."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    overrides = OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)
    return {str(o).lstrip("+").split("=", 1)[0] for o in overrides if str(o).startswith("+")}


def check_known_keys(cfg: DictConfig) -> None:
    """A key at the top of the config or under `trainer` that nothing reads is refused in one line: from an
    experiment preset (a user's --config-dir), a config file, or a misspelt override. Keys added with `+` on the
    command line are the user's own. Every Trainer argument has a rule (TRAINER_FLAG_RULES)."""
    added = typed_additions()
    for key in cfg.keys():
        if key not in top_level_keys() and key not in added:
            raise UserError(
                f"unknown config key {key!r} (from an experiment preset or a config file?): no option "
                "or rule reads it; remove it, or add it on purpose with +" + f"{key}=<value>"
            )
    trainer = cfg.get("trainer")
    if isinstance(trainer, DictConfig):
        flags = {rule.key.removeprefix("trainer.") for rule in TRAINER_FLAG_RULES} | {"_target_"}
        for key in trainer.keys():
            if key not in flags and f"trainer.{key}" not in added:
                raise UserError(
                    f"trainer.{key} is not an argument of Lightning's Trainer (docs/reliability_keys.md "
                    "lists every one): remove it from the experiment preset or config that sets it"
                )


# Group nodes built with hydra's instantiate, and the arguments the run passes them itself (not from the config).
BUILT = {
    "data": {"steps_per_call", "vocab"},
    "optimizer": {"params"},
    "schedule": {"total_steps"},
    "model": {"vocab_size", "block_size"},
    "trainer": {"callbacks", "logger", "plugins"},
}


def check_targets(cfg: DictConfig) -> None:
    """Before anything is built: every `_target_` of the run's groups (data, optimizer, schedule, model, trainer,
    each callback and logger) imports, and each of its config keys is an argument it takes. A user's model class
    that cannot be imported, or a misspelt optimizer key (`optimizer.momentun`), is one line here instead of an
    error after the data and the model are built. Imports the targets (torch, Lightning, the user's modules): call
    it where the run is about to build them (train.build_run), not in a torch-free process."""
    nodes = [(group, cfg.get(group)) for group in BUILT]
    for group in ("callbacks", "logger"):
        nodes += [(f"{group}.{name}", node) for name, node in (cfg.get(group) or {}).items()]
    for where, node in nodes:
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        target = locate(where, node._target_)
        check_arguments(where, node, target, BUILT.get(where, set()))


def locate(where: str, target) -> Any:
    """The object `target` names, or one line saying why it cannot be imported."""
    from hydra.utils import get_object

    if not isinstance(target, str) or not target:
        raise UserError(f"{where}._target_ must name a class or function (module.Name), got {target!r}")
    try:
        return get_object(target)
    except Exception as err:  # ImportError, or whatever the user's module raises while it is imported
        cause = err.__cause__ or err
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise UserError(
            f"{where}._target_={target} cannot be imported ({type(cause).__name__}: {detail}): is its "
            "module installed, or on PYTHONPATH?"
        ) from None


def check_arguments(where: str, node: DictConfig, target, passed: set[str]) -> None:
    """Each key of `node` (not Hydra's `_..._` keys) is an argument of `target`, unless it takes **kwargs."""
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        return
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    names = [name for name, p in parameters.items() if p.kind != inspect.Parameter.VAR_POSITIONAL]
    for key in node.keys():
        if str(key).startswith("_") or key in parameters:
            continue
        close = difflib.get_close_matches(str(key), names, n=1)
        hint = f" (did you mean {where}.{close[0]}?)" if close else ""
        takes = ", ".join(n for n in names if n not in passed and n != "self")
        raise UserError(f"{where}.{key} is not an argument of {node._target_}{hint}; it takes: {takes}")


def check_model_contract(net, model_name: str, vocab_size: int, block_size: int) -> None:
    """The model contract (models/__init__.py), checked on one window before training: forward(idx) on (B,
    block_size) indices gives (B, vocab_size) logits, and a model that scores every position gives (B, T,
    vocab_size) with all_positions=True. A user's model that returns another shape is one line naming both shapes,
    not a traceback from the loss on the first batch. In eval mode, without gradients: a BatchNorm's running
    statistics and the random state are left as they were."""
    import torch

    from makemore_lab.models import scores_every_position

    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    idx = torch.zeros(2, block_size, dtype=torch.long, device=device)
    checks = [("forward(idx)", {}, (2, vocab_size))]
    if scores_every_position(net):
        checks.append(("forward(idx, all_positions=True)", {"all_positions": True}, (2, block_size, vocab_size)))
    was_training = net.training
    net.eval()
    try:
        for call, kwargs, expected in checks:
            with torch.no_grad():
                try:
                    out = net(idx, **kwargs)
                except Exception as err:
                    raise UserError(
                        f"model {model_name}: {call} on a (2, {block_size}) batch of indices raised "
                        f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                    ) from None
            shape = tuple(getattr(out, "shape", ()))
            if not isinstance(out, torch.Tensor) or shape != expected:
                got = f"shape {shape}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
                raise UserError(
                    f"model {model_name}: {call} on a (B, block_size) = (2, {block_size}) batch returned "
                    f"{got}, where the model contract (src/makemore_lab/models/__init__.py) expects "
                    f"{expected}: (B, vocab_size) logits of the next character"
                    + (", or (B, T, vocab_size) with all_positions=True" if kwargs else "")
                )
    finally:
        net.train(was_training)
