"""What scoring a whole split costs (losses.split_loss: validations, the final exact losses, eval.py): each distinct
context run once (data.EvalBatches, the package's way) against running every window (the way before).

    OMP_NUM_THREADS=1 python scripts/benchmark_scoring.py                 # mlp and wavenet, 7 rounds
    OMP_NUM_THREADS=2 python scripts/benchmark_scoring.py --threads 2 --models mlp mlp_bn
    python scripts/benchmark_scoring.py --models mlp data.path=words.txt      # your own data

Builds each model as a run builds it (its default config, the embedded names) and times both on every split,
alternated in every round so that the machine's drift falls on both; prints the medians, the distinct contexts
among the windows and the largest difference between the two losses (float32 sums, not a different number).
A model that scores every position (rnn, gru, lstm, transformer) is scored on whole items instead: not timed here.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from benchmark_population_step import population
from torch.nn import functional as F

from makemore_lab import allocator, losses
from makemore_lab.models import scores_every_position

SPLITS = ("train", "val", "test")


@torch.inference_mode()
def every_window_loss(net, datamodule, split: str) -> float:
    """The split's loss with every window run through the model, eval_batch_size windows at a time."""
    windows, total = datamodule.splits[split], 0.0
    for lo in range(0, len(windows), datamodule.eval_batch_size):
        index = torch.arange(lo, min(lo + datamodule.eval_batch_size, len(windows)))
        x, y = windows.windows(index, datamodule.block_size)
        total += float(F.cross_entropy(net(x), y, reduction="none").double().sum())
    return total / len(windows)


def timed(loss_of, net, datamodule) -> dict[str, tuple[float, float]]:
    """{split: (seconds, loss)} of `loss_of(net, datamodule, split)` in eval mode."""
    net.eval()
    result = {}
    for split in SPLITS:
        start = time.perf_counter()
        loss = loss_of(net, datamodule, split)
        result[split] = (time.perf_counter() - start, loss)
    return result


def distinct_contexts(datamodule, split: str) -> int:
    windows = datamodule.splits[split]
    return len(windows.distinct_contexts(torch.arange(len(windows)), datamodule.block_size)[1]) - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mlp", "wavenet"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every model, e.g. data.path=words.txt")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    allocator.keep_freed_memory()  # as train.py and eval.py run
    variants = {"every window": every_window_loss, "distinct contexts": losses.split_loss}
    print(
        "| model | split | windows | distinct contexts | every window, median s | distinct contexts, median s | "
        "× faster | largest loss difference |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            member = population(model, 1, Path(tmp) / model, tuple(args.overrides)).members[0]
            if scores_every_position(member.net):
                print(f"| {model} | (scored on whole items: not timed here) |||||||")
                continue
            times = {name: {split: [] for split in SPLITS} for name in variants}
            scored = {name: {} for name in variants}
            for round_ in range(args.rounds + 1):  # the first round warms the caches and is dropped
                for name, loss_of in variants.items():
                    for split, (seconds, loss) in timed(loss_of, member.net, member.datamodule).items():
                        if round_:
                            times[name][split].append(seconds)
                        scored[name][split] = loss
            for split in SPLITS:
                old, new = (statistics.median(times[name][split]) for name in variants)
                difference = abs(scored["every window"][split] - scored["distinct contexts"][split])
                print(
                    f"| {model} | {split} | {member.datamodule.num_examples(split):,} | "
                    f"{distinct_contexts(member.datamodule, split):,} | {old:.3g} | {new:.3g} | {old / new:.2f} | "
                    f"{difference:.1e} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
