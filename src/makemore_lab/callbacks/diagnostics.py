"""Lecture 3's training-health measurements, taken on every run: nonlinearities and weights, every N optimizer steps."""

import pytorch_lightning as pl

from makemore_lab.callbacks.activation_stats import ActivationStats
from makemore_lab.callbacks.common import (
    StepClock,
    SummaryBatch,
    check_fraction,
    check_positive_int,
    network,
    next_multiple,
    tensorboard_writers,
)
from makemore_lab.callbacks.weight_update_ratios import WeightUpdateRatios

LAYER_STATS = ("kind", "mean", "std", "saturation", "dead", "dead_units", "units", "gradient_std")


class Diagnostics(pl.Callback):
    """Measures optimizer steps 0, n, 2n, ... and the last one, and writes to TensorBoard, at that step:

    - per nonlinearity layer L (named as in the network, e.g. `act`, `layers.2`, `cell.act`): scalars
      activation_mean/L, activation_std/L, saturation/L (fraction of outputs in the flat part), dead/L (fraction
      of units flat on every example of the batch), gradient_std/L; histograms activation/L and gradient/L;
      image saturation_map/L (rows: examples, columns: units, white: |t| > image_threshold), on every
      `image_every`-th measured step and the last (an image costs as much as the rest of a measurement, and
      TensorBoard shows 10 images per tag).
    - per weight W (parameters with >= 2 dims): scalars grad_data/W and update_data/W (weight_update_ratios.py).

    Only the measured steps pay: forward hooks are attached after the step before a measured one and removed
    after it, and the weights are copied on measured steps only. Only rank 0 measures. `history` (the numbers of
    every measured step) and `last` (the last measured step, with its tensors) feed HealthReport and
    DiagnosticFigures.

    Args:
        every_n_steps: measure one step in every n (1: every step).
        saturation_threshold: |tanh| beyond which an output counts as saturated (lecture 3: 0.97); sigmoid
            outputs are tested as 2 * sigmoid - 1, rectifiers (ReLU, GELU, ...) count outputs <= 0.
        image_threshold: the same for the saturation map (lecture 3's white-columns picture: 0.99).
        image_every: write the saturation maps on every this many measured steps.
    """

    def __init__(
        self,
        every_n_steps: int,
        saturation_threshold: float = 0.97,
        image_threshold: float = 0.99,
        image_every: int = 10,
    ):
        self.every_n_steps = check_positive_int(every_n_steps, "callbacks.diagnostics.every_n_steps")
        self.saturation_threshold = check_fraction(saturation_threshold, "callbacks.diagnostics.saturation_threshold")
        self.image_threshold = check_fraction(image_threshold, "callbacks.diagnostics.image_threshold")
        self.image_every = check_positive_int(image_every, "callbacks.diagnostics.image_every")
        self.clock = StepClock(before=self._before_step, after=self._after_step, next_due=self._next_due)
        self.history: list[dict] = []
        self.last: dict = {}
        self.activations: ActivationStats | None = None
        self.weights: WeightUpdateRatios | None = None
        self._writers = []
        self._last_step = -1

    def measures(self, step: int) -> bool:
        return step % self.every_n_steps == 0 or step == self._last_step

    def _next_due(self, step: int) -> int:
        """The first step >= `step` whose hooks matter: a measured step, or the one before it (which attaches
        the activation hooks for the measured step's forward pass)."""
        measured = next_multiple(step, self.every_n_steps)
        if self._last_step >= step:
            measured = min(measured, self._last_step)
        return measured - 1 if measured - 1 >= step else measured

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        net = network(pl_module)
        self.activations = ActivationStats(net, self.saturation_threshold, self.image_threshold)
        self.weights = WeightUpdateRatios(net)
        self._writers = tensorboard_writers(trainer)
        self._last_step = trainer.max_steps - 1
        self.clock.start(trainer)
        if self.measures(self.clock.step):
            self.activations.attach()

    def on_train_end(self, trainer, pl_module) -> None:
        self._stop()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._stop()

    def _stop(self) -> None:
        self.clock.stop()
        if self.activations:
            self.activations.detach()

    def _before_step(self, optimizer, step: int) -> None:
        if self.measures(step):
            self.weights.before_step(optimizer)

    def _after_step(self, optimizer, step: int) -> None:
        if self.measures(step):
            self._record(step, self.activations.measure(), self.weights.after_step())
        if self.measures(step + 1):
            self.activations.attach()
        else:
            self.activations.detach()

    def _record(self, step: int, layers: dict, weights: dict) -> None:
        self.history.append({
            "step": step,
            "layers": {name: {k: m[k] for k in LAYER_STATS} for name, m in layers.items()},
            "weights": {name: {k: w[k] for k in ("grad_data", "update_data")} for name, w in weights.items()},
        })
        self.last = {"step": step, "layers": layers, "weights": weights}
        if not self._writers:
            return
        maps = {}
        if (len(self.history) - 1) % self.image_every == 0 or step == self._last_step:
            maps = {name: self.activations.saturation_map(name, m["activations"]) for name, m in layers.items()}
        for writer in self._writers:
            write(writer, step, layers, weights, maps)


def write(writer, step: int, layers: dict, weights: dict, saturation_maps: dict) -> None:
    batch = SummaryBatch()
    for name, m in layers.items():
        batch.scalar(f"activation_mean/{name}", m["mean"])
        batch.scalar(f"activation_std/{name}", m["std"])
        batch.scalar(f"saturation/{name}", m["saturation"])
        batch.scalar(f"dead/{name}", m["dead"])
        batch.histogram(f"activation/{name}", m["activations"])
        if name in saturation_maps:
            batch.image(f"saturation_map/{name}", saturation_maps[name])
        if m["gradients"] is not None:
            batch.scalar(f"gradient_std/{name}", m["gradient_std"])
            batch.histogram(f"gradient/{name}", m["gradients"])
    for name, w in weights.items():
        batch.scalar(f"grad_data/{name}", w["grad_data"])
        batch.scalar(f"update_data/{name}", w["update_data"])
    batch.write(writer, step)
