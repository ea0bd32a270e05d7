"""Hydra's sweep syntax -> Optuna distributions (imported only when a sweep starts: optuna is an extra)."""

from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution


class UnsupportedSweep(ValueError):
    pass


def distribution(override: Override) -> BaseDistribution:
    """choice(...) -> categorical; range(a, b[, step]) -> the integers (or the grid) from a up to b, b excluded as in
    Hydra and Python; interval(a, b) -> uniform floats, tag(log, interval(a, b)) -> log-uniform."""
    value = override.value()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        values = list(override.sweep_iterator())
        if not values:
            raise UnsupportedSweep(f"{override.input_line}: the range is empty")
        if all(isinstance(v, int) for v in (start, stop, step)):
            return IntDistribution(start, values[-1], step=step)
        return FloatDistribution(float(start), float(values[-1]), step=float(step))
    if isinstance(value, IntervalSweep):  # Hydra parses an interval's ends as floats: a float search
        return FloatDistribution(value.start, value.end, log="log" in value.tags)
    raise UnsupportedSweep(f"{override.input_line}: the Optuna sweeper takes choice(), range() and interval()")
