"""Lecture 3's training-health diagnostics: one Lightning callback, `Diagnostics`.

- callback.py: the callback; measures every N optimizer steps, and its options add the initial-loss check, the
  health report and the figures (configs/callbacks/diagnostics.yaml).
- activations.py, weights.py: the measurements (nonlinearity outputs and gradients; grad:data and update:data).
- initial_loss.py, health.py: lecture 3's rules, judged on the measurements.
- figures.py: the lecture's four figures.

See docs/diagnostics.md.
"""

from makemore_lab.diagnostics.callback import Diagnostics

__all__ = ["Diagnostics"]
