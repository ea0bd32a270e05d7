"""Lecture 3's first check: before it learns anything, a network should be unsure, its loss about ln(vocab_size).

A loss far above that means the network starts confidently wrong: its output logits are too large, and the first
steps are spent only on shrinking them (lecture 3's "hockey stick" loss curve).
"""

import math


def check_initial_loss(loss: float, vocab_size: int, tolerance: float) -> tuple[bool, str]:
    """(ok, message): is the loss of step 0 within `tolerance` (a fraction) of ln(vocab_size)?"""
    expected = math.log(vocab_size)
    ratio = loss / expected
    if ratio > 1 + tolerance:
        return False, (
            f"initial loss {loss:.4f} is {ratio:.1f}x ln({vocab_size}) = {expected:.4f}: the network starts "
            "confidently wrong (its output logits are too large; lecture 3 scales the output layer's weights down "
            "and zeroes its bias, which model.init=kaiming does)"
        )
    if ratio < 1 - tolerance:
        return False, (
            f"initial loss {loss:.4f} is more than {tolerance:.0%} below ln({vocab_size}) = {expected:.4f}: "
            "the network predicts well before any training (do the inputs leak the targets?)"
        )
    return True, f"initial loss {loss:.4f} is within {tolerance:.0%} of ln({vocab_size}) = {expected:.4f}"
