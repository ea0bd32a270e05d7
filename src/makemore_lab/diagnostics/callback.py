"""The Diagnostics callback: lecture 3's measurements every N optimizer steps, and at the end of training the health
report and the figures built on them."""

import logging
import math
from pathlib import Path

import pytorch_lightning as pl

from makemore_lab import console
from makemore_lab.diagnostics import settings
from makemore_lab.diagnostics.activations import ActivationStats
from makemore_lab.diagnostics.figures import save_figures
from makemore_lab.diagnostics.health import HealthRules
from makemore_lab.diagnostics.initial_loss import check_initial_loss
from makemore_lab.diagnostics.weights import WeightUpdateRatios
from makemore_lab.logging_media import RunLoggers, StepLog
from makemore_lab.step_hooks import StepClock, network, next_multiple

log = logging.getLogger(__name__)

LAYER_STATS = ("kind", "mean", "std", "saturation", "dead", "dead_units", "units", "calls", "gradient_std")


class Diagnostics(pl.Callback):
    """Lecture 3's training-health diagnostics, as one callback (`configs/callbacks/diagnostics.yaml`).

    Measures optimizer steps 0, n, 2n, ... and the last one, and writes to the run's loggers (TensorBoard by
    default; logging_media.py: every logger gets the scalars, those that can the rest), at that step:

    - per nonlinearity layer L (named as in the network, e.g. `act`, `layers.2`, `cell.act`): scalars
      activation_mean/L, activation_std/L, saturation/L (fraction of outputs in the flat part), dead/L (fraction
      of units flat on every example of the batch), gradient_std/L; histograms activation/L and gradient/L;
      image saturation_map/L (rows: examples, columns: units, white: |t| > image_threshold), on every
      `image_every`-th measured step and the last (an image costs as much as the rest of a measurement, and
      TensorBoard shows 10 images per tag).
    - per weight W (parameters with >= 2 dims): scalars grad_data/W and update_data/W (weights.py).

    Its options add, on the same measurements:

    - initial_loss_check: right after step 0, scalars initial_loss/measured and initial_loss/expected (ln V) and
      a warning when the network starts confidently wrong. Reads the step-0 loss from `pl_module.initial_loss`
      and V from the datamodule's `vocab_size`; a run that does not start at step 0 is not checked.
    - health_report: at the end, lecture 3's rules judged where the lecture judges them (health.py), printed,
      in the loggers (text `health`) and in summary.json (`health`, through `summary_fields()`); `thresholds`
      overrides the lecture's values (health.THRESHOLDS).
    - figures: at the end, the lecture's four figures as `<figures_dir>/<figure>.png` and the loggers' images
      `figures/<figure>` (figures.py).

    Only the measured steps pay: forward hooks are attached just before a measured step's forward pass (the
    clock's `arm`) and removed after it, and the weights are copied on measured steps only. Steps are counted with
    torch's optimizer step hooks (step_hooks.py), so several optimizer steps per Lightning batch are measured
    alike. Only rank 0 measures. `history` holds the numbers of every measured step, `last` the last measured step
    with its tensors.

    Args:
        every_n_steps: measure one step in every n (1: every step).
        saturation_threshold: |tanh| beyond which an output counts as saturated (lecture 3: 0.97); sigmoid
            outputs are tested as 2 * sigmoid - 1, rectifiers (ReLU, GELU, ...) count outputs <= 0.
        image_threshold: the same for the saturation map (lecture 3's white-columns picture: 0.99).
        image_every: write the saturation maps on every this many measured steps.
        initial_loss_check, health_report, figures: the options above (all on by default).
        thresholds: the health rules' settings to change, by name (health.THRESHOLDS).
        figures_dir: where the PNG files go; by default `figures/` in the trainer's default_root_dir.
        figures_dpi: resolution of the figures.
    """

    def __init__(
        self,
        every_n_steps: int = 200,
        saturation_threshold: float = 0.97,
        image_threshold: float = 0.99,
        image_every: int = 10,
        initial_loss_check: bool = True,
        health_report: bool = True,
        figures: bool = True,
        thresholds: dict | None = None,
        figures_dir: str | None = None,
        figures_dpi: int = 100,
    ):
        self.every_n_steps = settings.positive_int(every_n_steps, "every_n_steps")
        self.saturation_threshold = settings.fraction(saturation_threshold, "saturation_threshold")
        self.image_threshold = settings.fraction(image_threshold, "image_threshold")
        self.image_every = settings.positive_int(image_every, "image_every")
        self.initial_loss_check = settings.flag(initial_loss_check, "initial_loss_check")
        self.health = HealthRules(**dict(thresholds or {})) if settings.flag(health_report, "health_report") else None
        self.figures = settings.flag(figures, "figures")
        self.figures_dir = figures_dir
        self.figures_dpi = settings.positive_int(figures_dpi, "figures_dpi")
        self.clock = StepClock(before=self._before_step, after=self._after_step, next_due=self._next_due, arm=self._arm)
        self.history: list[dict] = []
        self.last: dict = {}
        self.initial_loss: dict | None = None  # the initial-loss check's result
        self.verdict: dict | None = None  # the health report's
        self.figure_paths: list[Path] = []
        self.activations: ActivationStats | None = None
        self.weights: WeightUpdateRatios | None = None
        self.output_weights: set[str] = set()
        self._loggers: RunLoggers | list = []
        self._last_step = -1
        self._lr = None
        self._trainer = self._module = None

    def measures(self, step: int) -> bool:
        return step % self.every_n_steps == 0 or step == self._last_step

    def _next_due(self, step: int) -> int:
        """The first measured step >= `step` (the clock arms the activation hooks before its forward pass)."""
        measured = next_multiple(step, self.every_n_steps)
        return min(measured, self._last_step) if self._last_step >= step else measured

    # ------------------------------------------------------------------------------------------ Lightning hooks

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        net = network(pl_module)
        self._trainer, self._module = trainer, pl_module
        self.activations = ActivationStats(net, self.saturation_threshold, self.image_threshold)
        self.weights = WeightUpdateRatios(net)
        head = getattr(net, "lm_head", None)
        head_params = {id(p) for p in head.parameters()} if head is not None else set()
        self.output_weights = {name for name in self.weights.weights if id(self.weights.weights[name]) in head_params}
        self._loggers = RunLoggers(trainer)
        self._last_step = trainer.max_steps - 1
        self.clock.start(trainer)  # arms the activation hooks now if the first step is measured

    def on_train_end(self, trainer, pl_module) -> None:
        self._stop()
        if not trainer.is_global_zero:
            return
        if self.health is not None:
            self._report(trainer, pl_module)
        if self.figures and self.last:
            directory = Path(self.figures_dir or Path(trainer.default_root_dir) / "figures")
            self.figure_paths = save_figures(self, directory, self._loggers, trainer.global_step, self.figures_dpi)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._stop()

    def state_dict(self) -> dict:
        """Saved in every checkpoint (Lightning's callback state): a resumed run's health verdict then judges the
        whole run's measurements, as the uninterrupted run's does, not only those made since the resume."""
        return {"history": self.history, "initial_loss": self.initial_loss}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))
        self.initial_loss = state_dict.get("initial_loss")

    def summary_fields(self) -> dict:
        """What train.py adds to summary.json: the health report's verdict, under `health`."""
        return {"health": self.verdict} if self.verdict else {}

    # ------------------------------------------------------------------------------------------- the steps

    def _stop(self) -> None:
        self.clock.stop()
        if self.activations:
            self.activations.detach()

    def _before_step(self, optimizer, step: int) -> None:
        if self.measures(step):
            self._lr = float(optimizer.param_groups[0]["lr"])
            self.weights.before_step(optimizer)

    def _after_step(self, optimizer, step: int) -> None:
        if step == 0 and self.initial_loss_check:
            self._check_initial_loss()
        if self.measures(step):
            self._record(step, self.activations.measure(), self.weights.after_step())
        self.activations.detach()  # the clock arms them again before the next measured step's forward pass

    def _arm(self, step: int) -> None:
        if self.measures(step):
            self.activations.attach()

    def _record(self, step: int, layers: dict, weights: dict) -> None:
        self.history.append(
            {
                "step": step,
                "lr": self._lr,
                "layers": {name: {k: m[k] for k in LAYER_STATS} for name, m in layers.items()},
                "weights": {name: {k: w[k] for k in ("grad_data", "update_data")} for name, w in weights.items()},
            }
        )
        self.last = {"step": step, "layers": layers, "weights": weights}
        if not self._loggers:
            return
        maps = {}
        due = (len(self.history) - 1) % self.image_every == 0 or step == self._last_step
        if due and self._loggers.keep("images"):
            maps = {name: self.activations.saturation_map(name, m["activations"]) for name, m in layers.items()}
        self._loggers.write(step_log(layers, weights, maps), step)

    def _check_initial_loss(self) -> None:
        loss, vocab_size = self._loss_and_vocab()
        if loss is None or vocab_size is None or self.initial_loss is not None:
            return
        tolerance = self.health.initial_loss_tolerance if self.health else HealthRules().initial_loss_tolerance
        ok, message = check_initial_loss(loss, vocab_size, tolerance)
        self.initial_loss = {"ok": ok, "initial_loss": loss, "expected": math.log(vocab_size), "message": message}
        if self._loggers:
            record = StepLog()
            record.scalar("initial_loss/measured", loss)
            record.scalar("initial_loss/expected", math.log(vocab_size))
            self._loggers.write(record, 0)
        if not ok:
            log.warning(message)

    def _loss_and_vocab(self) -> tuple[float | None, int | None]:
        loss = getattr(self._module, "initial_loss", None)
        vocab_size = getattr(getattr(self._trainer, "datamodule", None), "vocab_size", None)
        return loss, vocab_size

    def _report(self, trainer, pl_module) -> None:
        self._trainer, self._module = trainer, pl_module
        loss, vocab_size = self._loss_and_vocab()
        self.verdict = self.health.judge(self.history, loss, vocab_size, self.output_weights)
        self.verdict["measured_every_n_steps"] = self.every_n_steps
        console.report(self.health.text(self.verdict), log)  # train.log, and the console of a single run
        if self._loggers:
            record = StepLog()
            record.text("health", self.health.text(self.verdict, markdown=True))
            self._loggers.write(record, trainer.global_step)


def step_log(layers: dict, weights: dict, saturation_maps: dict) -> StepLog:
    batch = StepLog()
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
    return batch
