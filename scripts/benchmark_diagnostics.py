"""What the training-health diagnostics cost: the same runs with the diagnostics callbacks on and off.

    python scripts/benchmark_diagnostics.py --threads 1               # mlp and wavenet, 3 rounds of off-on-off
    python scripts/benchmark_diagnostics.py --models mlp --steps 20000
    python scripts/benchmark_diagnostics.py --models mlp -- callbacks.diagnostics.every_n_steps=100  # another cadence

"on" is `python train.py model=<m>` as configured (the diagnostics callback with its initial-loss check, health
report and figures, and sampled text); "off" removes those two callbacks. Same model, seed, data and steps. Both are timed over the steady
part of training, after a warm-up and up to the last training call, so start-up and the one-off work at the end
(figures, health report) are not in it; the wall columns are the whole fit, which has them.

Two measures of the overhead, because a few percent is below the noise of one run on a shared machine:
- on / off: CPU time of the process per step (all its threads, TensorBoard's writer included), which other work
  on the machine disturbs less than wall time. Each of `--repeats` rounds runs off, on, off (or the reverse
  order, alternately); the overhead is the median over the rounds of on / (mean of the two offs) - 1, and the
  noise column is the same for the two offs (off / off - 1): an overhead within the noise is not measurable.
- hooks: the time spent inside the diagnostics' own hooks during the "on" runs (measuring, writing events,
  sampling, and the per-step check for whether to measure), per step of the same steady part, over the "off"
  step time (median over the runs). What it leaves out: torch's slower module call while a forward hook is
  attached (measured steps only) and the writer thread.
steps/s (from wall time) and CPU ms/step are the best run of each kind.
"""

import argparse
import contextlib
import functools
import io
import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from makemore_lab.callbacks.sample_text import SampleText
from makemore_lab.diagnostics import Diagnostics
from makemore_lab.diagnostics.activations import ActivationStats
from makemore_lab.train import train

CONFIGS = str(Path(__file__).resolve().parents[1] / "src" / "makemore_lab" / "configs")
DIAGNOSTICS = ["diagnostics", "sample_text"]  # the diagnostics callback (its report and figures with it), samples
HOOKS = [
    (Diagnostics, "_before_step"),
    (Diagnostics, "_after_step"),
    (ActivationStats, "_record"),
    (SampleText, "_after_step"),
]
in_hooks = {"seconds": 0.0}


def timed(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            in_hooks["seconds"] += time.perf_counter() - start

    return wrapper


class CpuTime(pl.Callback):
    """Process CPU time and time inside the diagnostics' hooks per optimizer step, between the first training call
    that ends past `warmup_steps` and the last."""

    def __init__(self, warmup_steps: int):
        self.warmup_steps = warmup_steps
        self.first = self.last = None

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.warmup_steps:
            self.last = (time.process_time(), in_hooks["seconds"], trainer.global_step)
            self.first = self.first or self.last

    def summary_fields(self) -> dict:
        (cpu, hooks, steps) = (b - a for a, b in zip(self.first, self.last))
        return {"cpu_ms_per_step": 1e3 * cpu / steps, "hooks_ms_per_step": 1e3 * hooks / steps}


def run(model: str, steps: int, warmup: int, diagnostics: bool, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as out:
        overrides = [
            f"model={model}",
            f"trainer.max_steps={warmup + steps}",
            f"trainer.val_check_interval={warmup + steps}",  # validate once, after the timed window
            "trainer.accelerator=cpu",
            "~callbacks.progress_bar",
            "+callbacks.throughput._target_=makemore_lab.callbacks.throughput.Throughput",
            f"+callbacks.throughput.warmup_steps={warmup}",
            "+callbacks.cpu_time._target_=__main__.CpuTime",
            f"+callbacks.cpu_time.warmup_steps={warmup}",
            f"paths.output_dir={out}",
            "num_samples=1",
            *extra,
        ]
        if not diagnostics:
            overrides += [f"~callbacks.{name}" for name in DIAGNOSTICS]
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=CONFIGS):
            cfg = compose("train", overrides=overrides)
        in_hooks["seconds"] = 0.0
        with contextlib.redirect_stdout(io.StringIO()):
            summary = train(cfg)
    return {
        "cpu_ms": summary["cpu_ms_per_step"],
        "rate": summary["steady_steps_per_second"],
        "wall": summary["train_seconds"],
        "hooks_ms": summary["hooks_ms_per_step"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mlp", "wavenet"])
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed steps per run, after a warm-up of 500 (default: 5000 for mlp, 1000 otherwise)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds of three runs (off, on, off)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for both runs")
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("makemore_lab").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    for cls, name in HOOKS:
        setattr(cls, name, timed(getattr(cls, name)))

    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"cpu, {args.repeats} rounds of off-on-off, overrides: {' '.join(args.overrides) or 'none'}"
    )
    print(
        "| model | steps | off: steps/s | on: steps/s | off: CPU ms/step | on: CPU ms/step | overhead: on / off | "
        "noise: off / off | overhead: hooks | off: wall s | on: wall s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model in args.models:
        steps = args.steps or (5000 if model == "mlp" else 1000)
        rounds = []
        for i in range(args.repeats):  # off, on, off: load from elsewhere that drifts hits both alike
            order = ("a", "on", "b") if i % 2 == 0 else ("b", "on", "a")
            rounds.append({mode: run(model, steps, 500, mode == "on", args.overrides) for mode in order})
        overhead = statistics.median(
            r["on"]["cpu_ms"] / ((r["a"]["cpu_ms"] + r["b"]["cpu_ms"]) / 2) - 1 for r in rounds
        )
        noise = statistics.median(r["b"]["cpu_ms"] / r["a"]["cpu_ms"] - 1 for r in rounds)
        offs, ons = [r[m] for r in rounds for m in ("a", "b")], [r["on"] for r in rounds]
        off, on = ({k: best(results, k) for k in ("cpu_ms", "rate", "wall")} for results in (offs, ons))
        hooks = statistics.median(r["hooks_ms"] for r in ons) / off["cpu_ms"]
        print(
            f"| {model} | {steps} | {off['rate']:,.0f} | {on['rate']:,.0f} | {off['cpu_ms']:.3f} | {on['cpu_ms']:.3f} | "
            f"{overhead:+.1%} | {noise:+.1%} | {hooks:+.1%} | {off['wall']:.1f} | {on['wall']:.1f} |",
            flush=True,
        )


def best(results: list[dict], key: str) -> float:
    return max(r[key] for r in results) if key == "rate" else min(r[key] for r in results)


if __name__ == "__main__":
    main()
