"""Lecture 3's training-health diagnostics: one Lightning callback, `Diagnostics`.

- callback.py: the callback; measures every N optimizer steps, and its options add the initial-loss check, the
  health report and the figures (configs/callbacks/diagnostics.yaml).
- activations.py, weights.py: the measurements (nonlinearity outputs and gradients; grad:data and update:data).
- initial_loss.py, health.py: lecture 3's rules, judged on the measurements.
- figures.py: the lecture's four figures.

See docs/diagnostics.md.
"""

__all__ = ["Diagnostics"]


def __getattr__(name: str):
    """`Diagnostics` imported when asked for (Hydra's `_target_`), so that health.py's verdict words load without
    Lightning (the sweep table, in a launcher process that never imports torch)."""
    if name == "Diagnostics":
        from makemore_lab.diagnostics.callback import Diagnostics

        return Diagnostics
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
