"""Lecture 3's four figures, drawn from the run's own measurements at the end of training.

- activation_distribution: a histogram of each nonlinearity layer's outputs (saturated tanh piles up at +-1);
- gradient_distribution: the same for the gradients flowing back into those outputs;
- weight_gradient_distribution: each weight's gradient, with its grad:data ratio;
- update_data_ratio: log10(update std / weight std) of each weight over the measured steps, with the -3 line.
The first three show the last measured step, as the lecture's plots show one step.
"""

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

BINS = 100
# Text drawn without FreeType's hinting (matplotlib's default force-autohints every glyph at 8x; text is most of
# the drawing) and the PNGs at zlib level 1 instead of PIL's 6: together 50-100 ms less of a run's ~0.6 s of
# figures, which a population pays once per member, for glyphs a little softer at 100 dpi and PNGs 16-25% larger
# (scripts/benchmark_figures.py times each setting).
FAST_TEXT = {"text.hinting": "no_hinting", "text.hinting_factor": 1}
# 8 x 4.5 inches with 14-point text: TensorBoard shows an image at its card's width (~400 px), where the default
# 10-point text of a 10-inch figure shrank to ~5 px; at this size and text the labels and legend still read there.
FIGURE_SIZE, FONT = (8, 4.5), {"font.size": 14}
PNG_COMPRESS_LEVEL = 1


def save_figures(diagnostics, directory: Path, loggers, step: int, dpi: int = 100) -> list[Path]:
    """Draw the figures from `diagnostics` (its `last` and `history`), save `<directory>/<figure>.png` and give
    them to the run's loggers (logging_media.RunLoggers) as images `figures/<figure>` at `step`; the PNG paths."""
    import matplotlib  # loaded only when there is something to draw
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from makemore_lab.atomic_write import write_bytes_atomically
    from makemore_lab.logging_media import StepLog

    directory.mkdir(parents=True, exist_ok=True)
    paths, record = [], StepLog()
    with matplotlib.rc_context(
        {**FAST_TEXT, **FONT}
    ):  # this call's own settings: the user's rcParams are left as they are
        for name, figure in draw(diagnostics, dpi).items():
            canvas = FigureCanvasAgg(figure)
            canvas.draw()  # rendered once, for the file and for the loggers
            rgb = np.asarray(canvas.buffer_rgba())[..., :3]
            encoded = io.BytesIO()
            Image.fromarray(rgb).save(encoded, format="png", compress_level=PNG_COMPRESS_LEVEL)  # once: file and TB
            png = encoded.getvalue()
            path = directory / f"{name}.png"
            write_bytes_atomically(path, png)  # a full disk names this file, and leaves no half PNG
            paths.append(path)
            record.image(f"figures/{name}", rgb, dataformats="HWC", png=png)
    if loggers:
        loggers.write(record, step)
    return paths


def draw(diagnostics, dpi: int = 100) -> dict:
    """The four figures (matplotlib Figures, no pyplot state), by name."""
    from matplotlib.figure import Figure

    last = diagnostics.last
    step = last["step"]
    layers, weights = last["layers"], last["weights"]
    figures = {}

    def new_axes():
        fig = Figure(figsize=FIGURE_SIZE, dpi=dpi)
        # fixed margins, not layout="constrained": its layout pass was a third of the figures' time, which a
        # population pays once per member
        fig.subplots_adjust(left=0.1, right=0.98, bottom=0.15, top=0.9)
        return fig, fig.subplots()

    fig, ax = new_axes()
    for name, m in layers.items():
        label = f"{name} ({m['kind']}): mean {m['mean']:+.2f}, std {m['std']:.2f}, saturated {m['saturation']:.1%}"
        ax.plot(*density(m["activations"]), label=label)
    ax.set(title=f"activation distribution (step {step})", xlabel="output", ylabel="density")
    figures["activation_distribution"] = finish(fig, ax, layers)

    fig, ax = new_axes()
    for name, m in layers.items():
        if m["gradients"] is not None:
            g = m["gradients"]
            ax.plot(*density(g), label=f"{name} ({m['kind']}): mean {g.mean():+.2e}, std {m['gradient_std']:.2e}")
    ax.set(title=f"gradient distribution (step {step})", xlabel="gradient of the output", ylabel="density")
    figures["gradient_distribution"] = finish(fig, ax, layers)

    fig, ax = new_axes()
    for name, w in weights.items():
        g = w["gradient"]
        ax.plot(*density(g), label=f"{name} {tuple(g.shape)}: grad:data {w['grad_data']:.2e}")
    ax.set(title=f"weight gradient distribution (step {step})", xlabel="gradient", ylabel="density")
    figures["weight_gradient_distribution"] = finish(fig, ax, weights)

    fig, ax = new_axes()
    names = dict.fromkeys(name for record in diagnostics.history for name in record["weights"])
    for name in names:
        points = [(r["step"], r["weights"][name]["update_data"]) for r in diagnostics.history if name in r["weights"]]
        ax.plot(*zip(*points), label=name)
    ax.axhline(-3, color="k", linestyle="--", linewidth=1, label="-3: lecture 3's rule of thumb")
    ax.set(title="update:data ratio", xlabel="optimizer step", ylabel="log10(update std / weight std)")
    figures["update_data_ratio"] = finish(fig, ax, names)
    return figures


def density(values: torch.Tensor) -> tuple[list[float], list[float]]:
    """Bin centres and densities of a tensor's values, as the lecture's plt.plot(hx[:-1], hy) line."""
    counts, edges = torch.histogram(values.detach().float().flatten().cpu(), bins=BINS, density=True)
    return ((edges[:-1] + edges[1:]) / 2).tolist(), counts.tolist()


def finish(fig, ax, items) -> object:
    if items:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "nothing measured", ha="center", va="center", transform=ax.transAxes)
    return fig
