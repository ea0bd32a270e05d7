"""What the diagnostics' four end-of-training figures cost a run (and each member of a population), per setting.

    python scripts/benchmark_figures.py                        # mlp and wavenet, 8 rounds
    python scripts/benchmark_figures.py --models wavenet --rounds 4

Builds the model as the population engine builds a member (one measured step: the diagnostics' `last` and
`history`), then times `figures.save_figures` with the settings of figures.py (`FAST_TEXT`, `PNG_COMPRESS_LEVEL`)
against matplotlib's and PIL's defaults (and the text setting alone), alternating the two in every round so that the machine's drift falls on
both; the median per setting is printed. Run it with one thread (OMP_NUM_THREADS=1): the figures are Python and
matplotlib's C++, a single core's work.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from benchmark_population_step import minibatches, population

from makemore_lab.diagnostics import Diagnostics, figures
from makemore_lab.losses import training_loss

SETTINGS = {
    "defaults (force_autohint x8, zlib 6)": ({"text.hinting": "force_autohint", "text.hinting_factor": 8}, 6),
    "unhinted, zlib 6": (dict(figures.FAST_TEXT), 6),
    "figures.py's (unhinted, zlib 1)": (dict(figures.FAST_TEXT), figures.PNG_COMPRESS_LEVEL),
}


def measured_diagnostics(model: str, out: Path) -> Diagnostics:
    """A member's Diagnostics after its first (measured) step."""
    pop = population(model, 2, out)
    for member in pop.members:
        member.start_callbacks()
    xs, ys = minibatches(pop, 1)
    for member in pop.members:  # the solo run's own step 0, as the population makes it where the diagnostics measure
        training_loss(member.net, xs[0], ys[0], member.module.all_positions).backward()
        member.optimizer.step()
    return next(c for c in pop.members[0].callbacks if isinstance(c, Diagnostics))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mlp", "wavenet"])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| model | settings | save_figures, median ms (4 figures) | PNG bytes |")
    print("|---|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            diagnostics = measured_diagnostics(model, Path(tmp) / model)
            times = {name: [] for name in SETTINGS}
            sizes = {}
            for round_ in range(args.rounds + 1):  # the first round warms matplotlib's caches and is dropped
                for name, (text, level) in SETTINGS.items():
                    figures.FAST_TEXT, figures.PNG_COMPRESS_LEVEL = text, level
                    start = time.perf_counter()
                    paths = figures.save_figures(diagnostics, Path(tmp) / model / "figures", None, 0)
                    if round_:
                        times[name].append(time.perf_counter() - start)
                    sizes[name] = sum(p.stat().st_size for p in paths)
            for name in SETTINGS:
                print(
                    f"| {model} | {name} | {statistics.median(times[name]) * 1000:.0f} | {sizes[name]:,} |", flush=True
                )


if __name__ == "__main__":
    main()
