"""One picture of the presets' validation loss curves, from the TensorBoard events of scripts/reproduce.py's runs.

    python scripts/plot_results.py                       # logs/reproduce/* -> docs/results_curves.png
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def val_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(run_dir / "tensorboard"))
    mux.Reload()
    events = sorted(
        (e.step, e.value)
        for run, tags in mux.Runs().items()
        if "val/loss" in tags.get("scalars", [])
        for e in mux.Scalars(run, "val/loss")
    )
    return [s for s, _ in events], [v for _, v in events]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=ROOT / "logs" / "reproduce")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results_curves.png")
    args = parser.parse_args()
    runs = sorted(d for d in args.runs.iterdir() if (d / "summary.json").exists())
    if not runs:
        raise SystemExit(f"error: no finished runs under {args.runs}")
    fig, ax = plt.subplots(figsize=(10, 6))
    for run in runs:
        steps, values = val_curve(run)
        style = "--" if "tuned" in run.name else "-"
        ax.plot(steps, values, style, label=f"{run.name} ({values[-1]:.3f})" if values else run.name)
    ax.set(xlabel="optimizer step", ylabel="validation loss (nats)", title="makemore-lab presets: validation loss",
           ylim=(1.9, 2.6))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(args.out)


if __name__ == "__main__":
    main()
