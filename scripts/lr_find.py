"""The learning-rate sweep of lecture 3: lr = 10^linspace(-3, 0) over the steps, one minibatch per step, loss vs exponent.

    python scripts/lr_find.py                                   # the MLP on names.txt, 1000 steps, as in the lecture
    python scripts/lr_find.py model=wavenet --steps 2000
    python scripts/lr_find.py model=transformer --min-exp -5 --max-exp -1 --out /tmp/lr_transformer

Arguments other than the options are train.py overrides (model=, optimizer=, data.path=, data.batch_size=, ...): the
model, data and optimizer are the ones `python train.py <overrides>` would train, and the optimizer's lr is replaced at
every step. Writes <out>/lr_find.png (the lecture's plot: loss against the exponent) and <out>/lr_find.csv, and prints
the suggestion as the override to use, e.g. `optimizer.lr=0.1`.

The suggestion is read off the smoothed curve the way the lecture reads its plot: the loss falls, bottoms out, then gets
unstable; take a rate a little below the bottom (a quarter decade, 10^-0.25 = 0.56x, by default). On the lecture's
MLP this gives 0.07-0.1 across seeds (the lecture picks 0.1). It is a starting point for a sweep, not a tuned value.

Lightning's Tuner.lr_find is not used: CharLM sets the lr of every step itself (schedules are a pure function of the
step) and steps the optimizer directly, so the tuner's scheduler would have nothing to drive.
"""

import argparse
import csv
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from makemore_lab.data import TrainExamples  # noqa: E402
from makemore_lab.errors import UserError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "src" / "makemore_lab" / "configs"


def lr_sweep(net, optimizer, examples, batch_size: int, exponents: torch.Tensor, generator) -> list[float]:
    """One optimizer step per exponent at lr = 10**exponent on a random minibatch; the losses, cut at the first non-finite one."""
    losses = []
    net.train()
    for exponent in exponents.tolist():
        for group in optimizer.param_groups:
            group["lr"] = 10**exponent
        x, y = examples[torch.randint(0, len(examples), (batch_size,), generator=generator)]  # gathered windows
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):  # diverged: everything after is noise
            break
    return losses


def smooth(values: list[float], window: int) -> list[float]:
    """Centred moving average (shorter at the ends): unlike an EMA it does not shift the minimum to higher lr."""
    t = torch.tensor(values, dtype=torch.float64)
    half = window // 2
    sums = torch.cat([torch.zeros(1, dtype=torch.float64), t.cumsum(0)])
    lo = (torch.arange(len(t)) - half).clamp(min=0)
    hi = (torch.arange(len(t)) + half + 1).clamp(max=len(t))
    return ((sums[hi] - sums[lo]) / (hi - lo)).tolist()


def suggest(exponents: list[float], smoothed: list[float], back_off: float) -> tuple[float, float]:
    """(exponent of the smoothed minimum, suggested exponent = that minus back_off, kept inside the swept range)."""
    finite = [(loss, e) for e, loss in zip(exponents, smoothed) if math.isfinite(loss)]
    best = min(finite)[1]
    return best, max(best - back_off, exponents[0])


def plot(path: Path, exponents, losses, smoothed, best: float, suggested: float, title: str) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(exponents, losses, lw=0.6, alpha=0.5, label="loss per step")
    ax.plot(exponents, smoothed, lw=2, label="smoothed")
    ax.axvline(best, color="grey", ls=":", label=f"smoothed minimum: lr {10**best:.3g}")
    ax.axvline(suggested, color="red", ls="--", label=f"suggestion: lr {10**suggested:.3g}")
    finite = [v for v in losses if math.isfinite(v)]
    top = min(max(finite), 2 * finite[0]) if finite else None  # a blow-up at the end should not flatten the plot
    ax.set_ylim(min(finite) * 0.95 if finite else None, top)
    ax.set_xlabel("log10(learning rate)")
    ax.set_ylabel("training loss (nats)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. model=wavenet data.batch_size=64")
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps, one lr each (default 1000)")
    parser.add_argument("--min-exp", type=float, default=-3.0, help="smallest lr exponent (default -3)")
    parser.add_argument("--max-exp", type=float, default=0.0, help="largest lr exponent (default 0)")
    parser.add_argument(
        "--back-off",
        type=float,
        default=0.25,
        help="how far below the smoothed minimum to suggest, in exponent units (default 0.25)",
    )
    parser.add_argument("--out", type=Path, help="output dir (default logs/lr_find/<model>)")
    args = parser.parse_intermixed_args(argv)
    if args.steps < 2 or not args.min_exp < args.max_exp:
        parser.error("need --steps >= 2 and --min-exp < --max-exp")

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        cfg = compose("train", overrides=args.overrides)
    torch.manual_seed(cfg.seed)
    data = instantiate(cfg.data)
    net = instantiate(cfg.model, vocab_size=data.vocab_size, block_size=data.block_size)
    optimizer = instantiate(cfg.optimizer)(params=net.parameters())
    train = TrainExamples(data.splits["train"], data.block_size, "windows")  # windows, gathered per minibatch
    exponents = torch.linspace(args.min_exp, args.max_exp, args.steps)
    generator = torch.Generator().manual_seed(cfg.seed)
    losses = lr_sweep(net, optimizer, train, cfg.data.batch_size, exponents, generator)

    exps = exponents[: len(losses)].tolist()
    smoothed = smooth(losses, window=max(1, args.steps // 20))  # 50 steps of 1000: 0.15 in exponent
    best, suggested = suggest(exps, smoothed, args.back_off)
    out = args.out or ROOT / "logs" / "lr_find" / cfg.model_name
    out.mkdir(parents=True, exist_ok=True)
    with (out / "lr_find.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "exponent", "lr", "loss", "smoothed"])
        writer.writerows((i, e, 10**e, loss, s) for i, (e, loss, s) in enumerate(zip(exps, losses, smoothed)))
    optimizer_name = cfg.optimizer._target_.rsplit(".", 1)[-1]
    title = f"{cfg.model_name}, {optimizer_name}, batch {cfg.data.batch_size}: lr = 10^linspace({args.min_exp:g}, {args.max_exp:g}, {args.steps})"
    plot(out / "lr_find.png", exps, losses, smoothed, best, suggested, title)

    if len(losses) < args.steps:
        print(
            f"the loss became non-finite at lr {10 ** exps[-1]:.3g} (step {len(losses) - 1}); the sweep stopped there",
            file=sys.stderr,
        )
    print(f"smoothed loss is lowest at lr {10**best:.3g} (10^{best:.2f})", file=sys.stderr)
    print(f"plot: {out / 'lr_find.png'}", file=sys.stderr)
    print(f"suggested: optimizer.lr={10**suggested:.3g}")


if __name__ == "__main__":
    try:
        main()
    except UserError as err:
        sys.exit(f"error: {err}")
