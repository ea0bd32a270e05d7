"""Learning-rate schedules: step -> multiplier of the optimizer's base lr, applied by CharLM before every optimizer step.

Each config in configs/schedule/ is a partial of one of these; the module completes it with the run's total steps.
"""

import math
from collections.abc import Callable

Multiplier = Callable[[int], float]


def constant(total_steps: int) -> Multiplier:
    return lambda step: 1.0


def step_decay(total_steps: int, at: float = 0.5, factor: float = 0.1) -> Multiplier:
    """The lectures' schedule: lr 0.1 for the first half, then 0.01 (`lr = 0.1 if i < 100000 else 0.01`)."""
    boundary = int(at * total_steps)
    return lambda step: 1.0 if step < boundary else factor


def cosine(total_steps: int, min_factor: float = 0.0) -> Multiplier:
    def multiplier(step: int) -> float:
        progress = min(step, total_steps) / max(1, total_steps)
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier


def warmup_cosine(total_steps: int, warmup_steps: int = 1000, min_factor: float = 0.1) -> Multiplier:
    """nanoGPT's get_lr: 1) linear warmup, 2) cosine decay down to min_factor at the last step."""
    decay = cosine(max(1, total_steps - warmup_steps), min_factor)

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return decay(step - warmup_steps)

    return multiplier
