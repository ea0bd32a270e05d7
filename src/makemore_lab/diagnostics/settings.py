"""Checks of the diagnostics' settings: a wrong value is a UserError naming its config key, through
config_schema's predicates and message (the same rules as every documented key)."""

from makemore_lab import config_schema as schema
from makemore_lab.errors import UserError  # noqa: F401 (re-exported for health.py)

KEY = "callbacks.diagnostics"


def positive_int(value, name: str) -> int:
    return schema.check(f"{KEY}.{name}", value, "a positive integer", schema.positive_int)


def fraction(value, name: str) -> float:
    return float(schema.check(f"{KEY}.{name}", value, "a number strictly between 0 and 1", schema.fraction))


def positive(value, name: str) -> float:
    # inf stays allowed (it switches a ratio rule off), so not schema.number, which wants a finite number
    is_positive = lambda v: not isinstance(v, bool) and isinstance(v, (int, float)) and v > 0
    return float(schema.check(f"{KEY}.{name}", value, "a positive number", is_positive))


def flag(value, name: str) -> bool:
    return schema.check(f"{KEY}.{name}", value, "true or false", lambda v: isinstance(v, bool))


def interval(value, name: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        low = high = float("nan")
    if not low < high:
        raise UserError(f"{KEY}.{name} must be two numbers [low, high] with low < high, got {value!r}")
    return low, high
