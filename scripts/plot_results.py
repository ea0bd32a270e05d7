"""One picture of the presets' validation loss curves, from the rows scripts/reproduce.py wrote.

    python scripts/plot_results.py               # docs/results.json -> docs/results_curves.png

Each row of results.json carries its run's validation curve (`val_curve`), so the picture needs no run dirs.
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "results.json")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results_curves.png")
    args = parser.parse_args()
    if not args.results.is_file():
        raise SystemExit(f"error: {args.results} not found: run scripts/reproduce.py first")
    rows = [r for r in json.loads(args.results.read_text()) if r.get("val_curve")]
    if not rows:
        raise SystemExit(f"error: no row of {args.results} has a val_curve: rerun scripts/reproduce.py")
    fig, ax = plt.subplots(figsize=(11, 6.5))
    colors = plt.cm.tab20.colors
    for i, row in enumerate(rows):
        steps, values = zip(*row["val_curve"])
        style = "--" if "tuned" in row["preset"] else "-"
        ax.plot(
            steps,
            values,
            style,
            color=colors[i % len(colors)],
            marker=".",
            markersize=4,
            label=f"{row['preset']} ({row['val_loss']:.3f})",
        )
    ax.set(
        xlabel="optimizer step",
        ylabel="validation loss (nats)",
        title="makemore-lab presets: validation loss",
        ylim=(1.9, 2.6),
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(args.out)


if __name__ == "__main__":
    main()
