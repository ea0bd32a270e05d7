"""A one-glance verdict per run: lecture 3's rules of thumb, judged where and how the lecture judges them.

The lecture judges a network's *initialisation* on its first forward and backward pass (loss vs ln V; per layer
the activations' std and saturation, in both directions; the gradients' scale across layers), its *training* by
update:data over the first steps at a constant lr, and a unit as dead when no example moves it. What a trained
network looks like (how saturated its tanh layers end up) describes the solution it found, so it is reported as
information, not judged. Every threshold is a setting (`callbacks.diagnostics.thresholds.<name>`) whose default
is the lecture's value.

Each rule gives `ok` (True / False; None when there was nothing to judge or it is information only), a
`message` naming the layers or weights concerned, its `values`, `why` (the lecture's reasoning, one line) and
`look_at` (the TensorBoard tags that show it).
"""

import math
import statistics
import textwrap
from dataclasses import dataclass

from makemore_lab.diagnostics import settings
from makemore_lab.diagnostics.initial_loss import check_initial_loss

SATURATING = ("Tanh", "Sigmoid")  # flat near their bounds
DEPTH_KIND = "Tanh"  # the lecture's stack: the std and gradient scale are compared across layers of this kind,
# each called once per forward (a recurrent cell's tanh layers are not a stack in depth)
DEAD_WHEN_FLAT = ("Tanh", "Sigmoid", "ReLU")  # flat on an example = no gradient through it (not so for GELU & co.)

WHY = {
    "initial_loss": "an untrained network should be equally unsure of every character (loss ln V); far above, it "
    "starts confidently wrong and spends its first steps shrinking the logits (the hockey stick)",
    "saturation": "a saturated tanh (|t| > 0.97) passes almost no gradient; at init the lecture accepts ~20% in the "
    "first layer (fed by unit-variance embeddings) and ~5% deeper, where the gain 5/3 holds it",
    "activation_std": "too small a gain shrinks the activations layer by layer towards 0 (gain 1: std 0.62 -> 0.32 "
    "over 5 layers); the gain 5/3 (or BatchNorm) keeps every layer at about the same std",
    "gradient_scale": "gradients should flow back at about the same scale through every layer; a wrong gain makes "
    "them shrink or grow layer by layer (gain 0.5: they grow with depth)",
    "update_data": "each step should change a weight by about 1/1000 of its size (log10 update:data ~ -3): well "
    "below, the lr is too low; well above, too high; the output layer, shrunk x0.1 at init, is an "
    "expected outlier",
    "dead_units": "a unit flat on every example (tanh always saturated, ReLU never active) gets no gradient and "
    "never learns; GELU, ELU, SiLU still pass gradient below 0, so are never counted dead",
    "final_saturation": "how saturated the trained network ends up describes its solution, not a fault: the lecture "
    "judges saturation at initialisation",
}
LOOK_AT = {
    "initial_loss": "initial_loss/measured",
    "saturation": "saturation/<layer>, saturation_map/<layer>, activation/<layer> at step 0",
    "activation_std": "activation_std/<layer>, activation/<layer> at step 0",
    "gradient_scale": "gradient_std/<layer>, gradient/<layer> at step 0",
    "update_data": "update_data/<weight>",
    "dead_units": "dead/<layer>, saturation_map/<layer>",
    "final_saturation": "saturation/<layer>",
}


@dataclass
class Thresholds:
    """The rules' settings; the defaults are the lecture's values."""

    initial_loss_tolerance: float = 0.1  # |initial loss / ln V - 1|
    max_first_layer_saturation: float = 0.3  # the lecture's first tanh layer starts at ~20% (gain 5/3)
    max_saturation: float = 0.1  # deeper tanh layers at init: the lecture's "~5%" (it sees 5-7% with gain 5/3)
    min_std_ratio: float = 0.75  # deepest tanh layer's std / first's at init (lecture: 0.88 at 5/3, 0.52 at gain 1)
    max_gradient_ratio: float = 3.0  # largest / smallest gradient std across the tanh layers at init
    update_data_range: tuple[float, float] = (-4.0, -2.0)  # median log10 update:data, "about -3"
    update_data_steps: int = 1000  # the early part of training judged (the lecture plots its first 1,000 steps)


THRESHOLDS = tuple(Thresholds.__dataclass_fields__)


class HealthRules:
    """judge(history, initial_loss, vocab_size, output_weights) -> verdict; text(verdict) -> the printout."""

    def __init__(self, **thresholds):
        unknown = set(thresholds) - set(THRESHOLDS)
        if unknown:
            raise settings.UserError(
                f"callbacks.diagnostics.thresholds: unknown {', '.join(sorted(unknown))} (known: {', '.join(THRESHOLDS)})"
            )
        t = Thresholds(**thresholds)
        name = "thresholds."
        self.initial_loss_tolerance = settings.fraction(t.initial_loss_tolerance, name + "initial_loss_tolerance")
        self.max_first_layer_saturation = settings.fraction(
            t.max_first_layer_saturation, name + "max_first_layer_saturation"
        )
        self.max_saturation = settings.fraction(t.max_saturation, name + "max_saturation")
        self.min_std_ratio = settings.fraction(t.min_std_ratio, name + "min_std_ratio")
        self.max_gradient_ratio = settings.positive(t.max_gradient_ratio, name + "max_gradient_ratio")
        self.update_data_range = settings.interval(t.update_data_range, name + "update_data_range")
        self.update_data_steps = settings.positive_int(t.update_data_steps, name + "update_data_steps")

    # ------------------------------------------------------------------------------------------------ verdict

    def judge(
        self,
        history: list[dict],
        initial_loss: float | None,
        vocab_size: int | None,
        output_weights: set[str] = frozenset(),
    ) -> dict:
        """history: the Diagnostics callback's records ({"step", "lr", "layers", "weights"}), oldest first."""
        start = history[0] if history and history[0]["step"] == 0 else None  # the lecture's first pass
        last = history[-1] if history else None
        rules = {
            "initial_loss": self._initial_loss(initial_loss, vocab_size),
            "saturation": self._saturation(start),
            "activation_std": self._activation_std(start),
            "gradient_scale": self._gradient_scale(start),
            "update_data": self._update_data(history, output_weights),
            "dead_units": self._dead_units(start, last),
            "final_saturation": self._final_saturation(last),
        }
        for name, checked in rules.items():
            checked["why"], checked["look_at"] = WHY[name], LOOK_AT[name]
        return {"ok": all(checked["ok"] is not False for checked in rules.values()), "rules": rules}

    def text(self, verdict: dict, markdown: bool = False) -> str:
        lines = ["training health (lecture 3's rules of thumb):"]
        for name, checked in verdict["rules"].items():
            lines += wrapped(f"{name}: {checked['message']}", indent=9, first=f"  [{mark(checked)}] ")
            lines += wrapped(f"why: {checked['why']}  [TensorBoard: {checked['look_at']}]", indent=9)
        lines.append("  verdict: " + verdict_line(verdict))
        indent = "    " if markdown else ""  # indented: a Markdown code block
        return "\n".join(indent + line for line in lines)

    # -------------------------------------------------------------------------------------------------- rules

    def _initial_loss(self, loss: float | None, vocab_size: int | None) -> dict:
        if loss is None or vocab_size is None:
            return rule(None, "not measured (the run did not start at step 0)")
        ok, message = check_initial_loss(loss, vocab_size, self.initial_loss_tolerance)
        return rule(ok, message, {"initial_loss": loss, "expected": math.log(vocab_size)})

    def _saturation(self, start: dict | None) -> dict:
        layers = saturating(start)
        if not layers:
            return rule(None, "not checked (no tanh or sigmoid layer measured at step 0)")
        values = {n: m["saturation"] for n, m in layers.items()}
        first = next(iter(values))
        limits = {n: self.max_first_layer_saturation if n == first else self.max_saturation for n in values}
        over = {n: v for n, v in values.items() if v > limits[n]}
        listed = ", ".join(f"{n} {v:.1%}" for n, v in values.items())
        limit = f"first layer {self.max_first_layer_saturation:.0%}, deeper {self.max_saturation:.0%}"
        if len(values) == 1:
            limit = f"{self.max_first_layer_saturation:.0%}"
        if over:
            names = ", ".join(over)
            return rule(False, f"{names} too saturated at init ({listed}; limit {limit})", over)
        return rule(True, f"at init {listed} (limit {limit})", values)

    def _activation_std(self, start: dict | None) -> dict:
        layers = stack(start)
        if len(layers) < 2:
            return rule(None, "not checked (fewer than two tanh layers in a stack at step 0: no depth)")
        stds = {n: m["std"] for n, m in layers.items()}
        first, deepest = stds[next(iter(stds))], stds[list(stds)[-1]]
        ratio = deepest / first if first > 0 else 0.0
        listed = " -> ".join(f"{v:.2f}" for v in stds.values())
        values = {**stds, "ratio": ratio}
        if ratio < self.min_std_ratio:
            return rule(
                False,
                f"activations shrink through depth at init: std {listed} (deepest / first "
                f"{ratio:.2f} < {self.min_std_ratio:g})",
                values,
            )
        return rule(
            True, f"std at init {listed} (deepest / first {ratio:.2f}, at least {self.min_std_ratio:g})", values
        )

    def _gradient_scale(self, start: dict | None) -> dict:
        layers = {n: m for n, m in stack(start).items() if m.get("gradient_std")}
        if len(layers) < 2:
            return rule(None, "not checked (fewer than two tanh layers in a stack at step 0: no depth)")
        stds = {n: m["gradient_std"] for n, m in layers.items()}
        ratio = max(stds.values()) / min(stds.values())
        listed = " -> ".join(f"{v:.1e}" for v in stds.values())
        values = {**stds, "ratio": ratio}
        if ratio > self.max_gradient_ratio:
            trend = "grow" if list(stds.values())[-1] > list(stds.values())[0] else "shrink"
            return rule(
                False,
                f"gradients {trend} with depth at init: std {listed} (largest / smallest "
                f"{ratio:.1f} > {self.max_gradient_ratio:g})",
                values,
            )
        return rule(
            True,
            f"gradient std at init {listed} (largest / smallest {ratio:.1f}, at most {self.max_gradient_ratio:g})",
            values,
        )

    def _update_data(self, history: list[dict], output_weights: set[str]) -> dict:
        early = [r for r in history if r["step"] < history[0]["step"] + self.update_data_steps] if history else []
        if len(early) > 1 and not math.isclose(early[1].get("lr") or 0.0, early[0].get("lr") or 0.0, rel_tol=1e-6):
            return rule(None, "not checked (the lr changes from the first steps on: no early constant-lr part)")
        early = [r for r in early if math.isclose(r.get("lr") or 0.0, early[0].get("lr") or 0.0, rel_tol=1e-6)]
        series: dict[str, list[float]] = {}
        for record in early:
            for name, w in record["weights"].items():
                series.setdefault(name, []).append(w["update_data"])
        judged = {n: statistics.median(v) for n, v in series.items() if n not in output_weights}
        if not judged:
            return rule(None, "not checked (no weight update measured)")
        outputs = {n: statistics.median(v) for n, v in series.items() if n in output_weights}
        low, high = self.update_data_range
        steps = f"median over the {len(early)} measured steps {early[0]['step']}-{early[-1]['step']}"
        listed = ", ".join(f"{n} {v:+.2f}" for n, v in judged.items())
        output = "".join(f"; output layer {n} {v:+.2f}, not judged" for n, v in outputs.items())
        outside = {n: v for n, v in judged.items() if not low <= v <= high}
        if outside:
            slow = all(v < low for v in outside.values())
            how = (
                "too slow (lr too low)"
                if slow
                else "too fast (lr too high)"
                if all(v > high for v in outside.values())
                else "off"
            )
            names = ", ".join(f"{n} {v:+.2f}" for n, v in outside.items())
            return rule(
                False, f"{names} outside [{low:g}, {high:g}]: learning {how} ({steps}{output})", {**judged, **outputs}
            )
        return rule(True, f"within [{low:g}, {high:g}] ({steps}: {listed}{output})", {**judged, **outputs})

    def _dead_units(self, start: dict | None, last: dict | None) -> dict:
        records = [r for r in (start, last) if r is not None]
        if start is last:
            records = records[:1]
        judged = {}
        for record in records:
            for n, m in record["layers"].items():
                if m["kind"] in DEAD_WHEN_FLAT and m["dead_units"]:
                    judged.setdefault(f"{n} at step {record['step']}", (m["dead_units"], m["units"]))
        kinds = {m["kind"] for r in records for m in r["layers"].values()}
        if not kinds:
            return rule(None, "not checked (no nonlinearity measured)")
        not_judged = sorted(kinds - set(DEAD_WHEN_FLAT))
        aside = (
            f" ({', '.join(not_judged)} not judged: {'it passes' if len(not_judged) == 1 else 'they pass'} "
            "gradient below 0)"
            if not_judged
            else ""
        )
        steps = " and ".join(f"step {r['step']}" for r in records)
        if judged:
            listed = ", ".join(f"{n}: {d} of {u}" for n, (d, u) in judged.items())
            return rule(
                False,
                f"units flat on every example of the batch: {listed}{aside}",
                {n: d for n, (d, _) in judged.items()},
            )
        return rule(True, f"no unit flat on every example of the batch at {steps}{aside}")

    def _final_saturation(self, last: dict | None) -> dict:
        layers = saturating(last)
        if not layers:
            return rule(None, "no tanh or sigmoid layer measured")
        values = {n: m["saturation"] for n, m in layers.items()}
        listed = ", ".join(f"{n} {v:.1%}" for n, v in values.items())
        return rule(None, f"at step {last['step']}: {listed} (information, not judged)", values, info=True)


def saturating(record: dict | None) -> dict:
    return {n: m for n, m in (record or {}).get("layers", {}).items() if m["kind"] in SATURATING}


WIDTH = 110  # the report's lines, `why:` wrapped to it


def wrapped(text: str, indent: int, first: str | None = None) -> list[str]:
    """`text` in lines of at most WIDTH characters, indented (the first line starts with `first` if given); a
    `[TensorBoard: ...]` tag list is not split."""
    head, bracket, tags = text.partition("[TensorBoard: ")
    words = head.split() + ([(bracket + tags).replace(" ", "\0")] if bracket else [])
    lines = textwrap.wrap(
        " ".join(words),
        WIDTH,
        initial_indent=" " * indent if first is None else first,
        subsequent_indent=" " * indent,
        break_long_words=False,
        break_on_hyphens=False,
    )
    return [line.replace("\0", " ") for line in lines]


def judged(verdict: dict) -> tuple[list[str], list[str], list[str]]:
    """(rules passed, rules broken, rules not checked) of a verdict; information-only rules are none of them."""
    rules = {name: checked for name, checked in verdict["rules"].items() if not checked.get("info")}
    return (
        [name for name, checked in rules.items() if checked["ok"] is True],
        [name for name, checked in rules.items() if checked["ok"] is False],
        [name for name, checked in rules.items() if checked["ok"] is None],
    )


def verdict_line(verdict: dict) -> str:
    """The verdict in words. "healthy" only when every rule was checked: a short run or a model without a tanh stack
    leaves rules unchecked, and the line then says how many were, so it never reads as a clean bill of health."""
    passed, broken, unchecked = judged(verdict)
    if broken:
        return f"{len(broken)} of {len(passed) + len(broken)} rules broken ({', '.join(broken)})"
    if not unchecked:
        return f"healthy (all {len(passed)} rules passed)"
    return (
        f"no rule broken, {len(passed)} of {len(passed) + len(unchecked)} checked (not checked: {', '.join(unchecked)})"
    )


def verdict_word(verdict: dict | None) -> str:
    """The verdict in a sweep table's cell: `ok`, `ok (3/6 checked)`, `FAIL: update_data`, or `–` (no diagnostics)."""
    if not verdict:
        return "–"
    passed, broken, unchecked = judged(verdict)
    if broken:
        return "FAIL: " + ", ".join(broken)
    return "ok" if not unchecked else f"ok ({len(passed)}/{len(passed) + len(unchecked)} checked)"


def stack(record: dict | None) -> dict:
    """The tanh layers of a feed-forward stack, in order: each called once per forward."""
    return {
        n: m for n, m in (record or {}).get("layers", {}).items() if m["kind"] == DEPTH_KIND and m.get("calls", 1) == 1
    }


def mark(checked: dict) -> str:
    if checked.get("info"):
        return "info"
    return {True: "ok  ", False: "FAIL", None: "--  "}[checked["ok"]]


def rule(ok: bool | None, message: str, values: dict | None = None, info: bool = False) -> dict:
    checked = {"ok": ok, "message": message, "values": values or {}}
    if info:
        checked["info"] = True
    return checked
