"""Checks of the diagnostics' settings: a wrong value is a UserError naming its config key."""

from makemore_lab.errors import UserError  # noqa: F401 (re-exported for health.py)

KEY = "callbacks.diagnostics"


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{KEY}.{name} must be a positive integer, got {value!r}")
    return value


def fraction(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise UserError(f"{KEY}.{name} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise UserError(f"{KEY}.{name} must be a positive number, got {value!r}")
    return float(value)


def flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"{KEY}.{name} must be true or false, got {value!r}")
    return value


def interval(value, name: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        low = high = float("nan")
    if not low < high:
        raise UserError(f"{KEY}.{name} must be two numbers [low, high] with low < high, got {value!r}")
    return low, high
