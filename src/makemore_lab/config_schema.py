"""The documented config keys, their types and allowed values, declared once; `validate` checks a composed config.

Every entry point calls `validate_*` before it builds anything, so a wrong value of any key listed here fails
in one line naming the key (`error: trainer.max_steps must be a positive integer, got 0`) instead of a traceback
from deep inside torch or Lightning, or a silent misbehaviour after the run. A key absent from the config (an
optimizer without `momentum`, say) is not checked; a key present must obey its rule.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
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


# Value predicates. bool is an int to Python but never a number here (`steps=true` is a typo, not 1).
def integer(low: int | None = None, high: int | None = None) -> Callable[[Any], bool]:
    return lambda v: (isinstance(v, int) and not isinstance(v, bool)
                      and (low is None or v >= low) and (high is None or v <= high))


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
positive_int, non_negative_int = integer(low=1), integer(low=0)
fraction = number(above=0, below=1)

PRECISIONS = ("32", "32-true", "bf16-mixed", "16-mixed", "64", "64-true", "bf16-true", "16-true", 32, 64, 16)

# What the data module takes: also checked by CharDataModule itself, which eval.py and sample.py build from a
# checkpoint's saved settings without a config.
DATA_RULES = [
    Rule("block_size", "a positive integer (or null: longest item + 1)", positive_int, nullable=True),
    Rule("steps_per_call", "a positive integer", positive_int),
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

TRAIN_RULES = [
    Rule("seed", "an integer in [0, 2**32)", integer(0, 2**32 - 1)),
    Rule("num_samples", "a non-negative integer", non_negative_int),
    Rule("max_params", "a positive integer or null", positive_int, nullable=True),
    Rule("final_weights", "'last' or 'best'", one_of("last", "best")),
    Rule("ckpt_path", "a checkpoint path or null", text, nullable=True),
    Rule("threads", "'auto' or a positive integer", lambda v: v == "auto" or positive_int(v)),
    Rule("optimizer.lr", "a positive number below 1e30", number(above=0, below=1e30)),
    Rule("optimizer.weight_decay", "a non-negative number", number(at_least=0)),
    Rule("optimizer.momentum", "a number in [0, 1)", number(at_least=0, below=1)),
    Rule("optimizer.betas", "two numbers in [0, 1), e.g. [0.9, 0.99]", pair_of(number(at_least=0, below=1))),
    Rule("optimizer.eps", "a positive number", number(above=0)),
    Rule("trainer.max_steps", "a positive integer", positive_int),
    Rule("trainer.val_check_interval", "a positive number of optimizer steps", positive_int),
    Rule("trainer.log_every_n_steps", "a positive number of optimizer steps", positive_int),
    Rule("trainer.gradient_clip_val", "a positive number or null", number(above=0), nullable=True),
    Rule("trainer.gradient_clip_algorithm", "'norm' or 'value'", one_of("norm", "value"), nullable=True),
    Rule("trainer.precision", f"one of {', '.join(map(str, PRECISIONS[:8]))}", one_of(*PRECISIONS), nullable=True),
    Rule("trainer.accumulate_grad_batches", "1 (raise data.batch_size instead)", one_of(1)),
    Rule("trainer.max_time", "null or a duration 'DD:HH:MM:SS'", text, nullable=True),
    Rule("model.dropout", "a number in [0, 1)", number(at_least=0, below=1)),
    Rule("model.init", "one of kaiming, naive, torch", one_of("kaiming", "naive", "torch")),
    *DATA_RULES,
]

SAMPLE_RULES = [
    Rule("ckpt_path", "a checkpoint path", text),
    Rule("num_samples", "a positive integer", positive_int),
    Rule("seed", "an integer in [0, 2**32)", integer(0, 2**32 - 1)),
    Rule("temperature", "a positive number", number(above=0)),
    Rule("top_k", "a positive integer or null", positive_int, nullable=True),
    Rule("max_length", "a positive integer", positive_int),
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


def validate(cfg: DictConfig, rules: list[Rule]) -> None:
    """Raise UserError for the first key whose value breaks its rule."""
    for rule in rules:
        value = OmegaConf.select(cfg, rule.key, default=_ABSENT, throw_on_missing=False)
        if value is _ABSENT or (value is None and rule.nullable):
            continue
        check(rule.key, value, rule.what, rule.ok)
