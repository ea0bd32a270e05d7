"""What scoring a whole split costs (losses.split_loss: validations, the final exact losses, eval.py), with scoring's
tanh (losses.ScoringTanh, 2 * sigmoid(2x) - 1) against torch's own CPU tanh.

    OMP_NUM_THREADS=1 python scripts/benchmark_scoring.py                 # mlp and wavenet, 7 rounds
    OMP_NUM_THREADS=2 python scripts/benchmark_scoring.py --threads 2 --models mlp rnn
    python scripts/benchmark_scoring.py --models mlp data.path=words.txt      # your own data

Builds each model as a run builds it (its default config, the embedded names) and times split_loss on every split
with each tanh, the two alternated in every round so that the machine's drift falls on both; prints the median
per split and the largest difference between the two losses (float32 arithmetic, not a different number).
"""

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmark_population_step import population
from makemore_lab import allocator, losses

SPLITS = ("train", "val", "test")


def timed_losses(net, datamodule, scoring_tanh) -> dict[str, tuple[float, float]]:
    """{split: (seconds, loss)} with `scoring_tanh` as position_losses' tanh mode."""
    kept, losses.ScoringTanh = losses.ScoringTanh, scoring_tanh
    try:
        result = {}
        for split in SPLITS:
            start = time.perf_counter()
            loss = losses.split_loss(net, datamodule, split)
            result[split] = (time.perf_counter() - start, loss)
        return result
    finally:
        losses.ScoringTanh = kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mlp", "wavenet"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every model, e.g. data.path=words.txt")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    allocator.keep_freed_memory()  # as train.py and eval.py run
    variants = {"torch's tanh": contextlib.nullcontext, "ScoringTanh": losses.ScoringTanh}  # nullcontext: torch's own
    print("| model | split | examples | torch's tanh, median s | ScoringTanh, median s | × faster | "
          "largest loss difference |")
    print("|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            member = population(model, 1, Path(tmp) / model, tuple(args.overrides)).members[0]
            times = {name: {split: [] for split in SPLITS} for name in variants}
            scored = {name: {} for name in variants}
            for round_ in range(args.rounds + 1):  # the first round warms the caches and is dropped
                for name, variant in variants.items():
                    for split, (seconds, loss) in timed_losses(member.net, member.datamodule, variant).items():
                        if round_:
                            times[name][split].append(seconds)
                        scored[name][split] = loss
            for split in SPLITS:
                old, new = (statistics.median(times[name][split]) for name in variants)
                difference = abs(scored["torch's tanh"][split] - scored["ScoringTanh"][split])
                print(f"| {model} | {split} | {member.datamodule.num_examples(split):,} | {old:.3f} | {new:.3f} | "
                      f"{old / new:.2f} | {difference:.1e} |", flush=True)


if __name__ == "__main__":
    main()
