import math

import pytest

from makemore_lab.schedules import constant, cosine, step_decay, warmup_cosine


def test_step_decay_is_the_lectures():
    f = step_decay(200_000)
    assert f(0) == 1.0 and f(99_999) == 1.0 and f(100_000) == pytest.approx(0.1) and f(199_999) == pytest.approx(0.1)


def test_cosine_and_warmup():
    f = cosine(100, min_factor=0.0)
    assert f(0) == 1.0 and f(50) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)
    g = warmup_cosine(110, warmup_steps=10, min_factor=0.1)
    assert g(0) == pytest.approx(0.1) and g(9) == pytest.approx(1.0)
    assert g(10) == pytest.approx(1.0) and g(110) == pytest.approx(0.1)
    assert g(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert constant(10)(5) == 1.0
