"""A one-glance verdict per run: lecture 3's rules of thumb, checked against what the run measured."""

import math
import statistics

import pytorch_lightning as pl

from makemore_lab.callbacks.activation_stats import SQUASHING
from makemore_lab.callbacks.common import check_fraction, find_callback, tensorboard_writers
from makemore_lab.callbacks.diagnostics import Diagnostics
from makemore_lab.callbacks.initial_loss_check import check_initial_loss
from makemore_lab.errors import UserError

SATURATING_KINDS = {cls.__name__ for cls in SQUASHING}


class HealthReport(pl.Callback):
    """At the end of training: each rule with ok / broken and the layer or weight that broke it, printed, written
    to TensorBoard (text `health`) and to summary.json (`health`).

    - initial_loss: the loss of step 0 is within `initial_loss_tolerance` of ln(vocab_size);
    - saturation: at the last measured step, no tanh or sigmoid layer has more than `max_saturation` of its
      outputs saturated (lecture 3: about 5%);
    - update_data: each weight's median update:data over the measured steps lies in `update_data_range`
      (lecture 3: about -3, i.e. each step changes a weight by a thousandth of its size);
    - dead_units: at the last measured step, no unit is flat on every example of the batch.
    The last three read the Diagnostics callback's measurements; a rule with nothing to check (diagnostics off,
    a model without nonlinearities) is reported as not checked (ok: null) and does not fail the verdict.
    """

    def __init__(
        self,
        initial_loss_tolerance: float = 0.1,
        max_saturation: float = 0.05,
        update_data_range: tuple[float, float] = (-4.0, -2.0),
    ):
        self.initial_loss_tolerance = check_fraction(
            initial_loss_tolerance, "callbacks.health_report.initial_loss_tolerance"
        )
        self.max_saturation = check_fraction(max_saturation, "callbacks.health_report.max_saturation")
        try:
            low, high = (float(v) for v in update_data_range)
        except (TypeError, ValueError):
            low = high = math.nan
        if not low < high:
            raise UserError(
                "callbacks.health_report.update_data_range must be two numbers [low, high] with low < high, "
                f"got {update_data_range!r}"
            )
        self.update_data_range = (low, high)
        self.verdict: dict | None = None

    def on_train_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        diagnostics = find_callback(trainer, Diagnostics)
        history = diagnostics.history if diagnostics else []
        vocab_size = getattr(trainer.datamodule, "vocab_size", None)
        rules = {
            "initial_loss": self._initial_loss(getattr(pl_module, "initial_loss", None), vocab_size),
            "saturation": self._saturation(history[-1] if history else None),
            "update_data": self._update_data(history),
            "dead_units": self._dead_units(history[-1] if history else None),
        }
        self.verdict = {"ok": all(checked["ok"] is not False for checked in rules.values()), "rules": rules}
        if diagnostics:
            self.verdict["measured_every_n_steps"] = diagnostics.every_n_steps
        print(self.text(), flush=True)
        for writer in tensorboard_writers(trainer):
            writer.add_text("health", self.text(markdown=True), trainer.global_step)

    def summary_fields(self) -> dict:
        return {"health": self.verdict} if self.verdict else {}

    def text(self, markdown: bool = False) -> str:
        rules = self.verdict["rules"]
        broken = [name for name, checked in rules.items() if checked["ok"] is False]
        mark = {True: "ok  ", False: "FAIL", None: "--  "}
        verdict = "healthy" if not broken else f"{len(broken)} of {len(rules)} rules broken ({', '.join(broken)})"
        lines = [
            "training health (lecture 3's rules of thumb):",
            *(f"  [{mark[checked['ok']]}] {name}: {checked['message']}" for name, checked in rules.items()),
            f"  verdict: {verdict}",
        ]
        indent = "    " if markdown else ""  # indented: a Markdown code block
        return "\n".join(indent + line for line in lines)

    def _initial_loss(self, loss: float | None, vocab_size: int | None) -> dict:
        if loss is None or vocab_size is None:
            return rule(None, "not measured (the run did not start at step 0)")
        ok, message = check_initial_loss(loss, vocab_size, self.initial_loss_tolerance)
        return rule(ok, message, {"initial_loss": loss, "expected": math.log(vocab_size)})

    def _saturation(self, record: dict | None) -> dict:
        layers = {n: m for n, m in (record or {}).get("layers", {}).items() if m["kind"] in SATURATING_KINDS}
        if not layers:
            return rule(None, "not checked (no tanh or sigmoid layer measured)")
        values = {n: m["saturation"] for n, m in layers.items()}
        over = {n: v for n, v in values.items() if v > self.max_saturation}
        listed = ", ".join(f"{n} {v:.1%}" for n, v in (over or values).items())
        if over:
            return rule(False, f"{listed} saturated at step {record['step']}, above {self.max_saturation:.0%}", over)
        limit = f"{self.max_saturation:.0%}"
        return rule(True, f"every layer at most {limit} saturated at step {record['step']} ({listed})", values)

    def _update_data(self, history: list[dict]) -> dict:
        series: dict[str, list[float]] = {}
        for record in history:
            for name, w in record["weights"].items():
                series.setdefault(name, []).append(w["update_data"])
        if not series:
            return rule(None, "not checked (no weight update measured)")
        medians = {name: statistics.median(values) for name, values in series.items()}
        low, high = self.update_data_range
        outside = {n: v for n, v in medians.items() if not low <= v <= high}
        listed = ", ".join(f"{n} {v:+.2f}" for n, v in (outside or medians).items())
        steps = f"median log10 update:data over {len(history)} measured steps"
        if outside:
            return rule(False, f"{listed} outside [{low:g}, {high:g}] ({steps}; lecture 3: about -3)", outside)
        return rule(True, f"every weight within [{low:g}, {high:g}] ({steps}: {listed})", medians)

    def _dead_units(self, record: dict | None) -> dict:
        layers = (record or {}).get("layers", {})
        if not layers:
            return rule(None, "not checked (no nonlinearity measured)")
        dead = {n: m["dead_units"] for n, m in layers.items() if m["dead_units"]}
        if dead:
            listed = ", ".join(f"{n} {d} of {layers[n]['units']}" for n, d in dead.items())
            return rule(False, f"{listed} units flat on every example of the batch at step {record['step']}", dead)
        return rule(True, f"no unit flat on every example of the batch at step {record['step']}")


def rule(ok: bool | None, message: str, values: dict | None = None) -> dict:
    return {"ok": ok, "message": message, "values": values or {}}
