"""Runs sharing a machine: steps/s of one run alone and of two at once, with torch's default threads vs threads=auto.

    python scripts/benchmark_threads.py                     # wavenet and mlp; table on stdout
    python scripts/benchmark_threads.py --models wavenet --steps 3000

Each run is `python train.py model=<m>` in its own process (no diagnostics, no logger, one validation at the end),
started with no OMP_NUM_THREADS in its environment, as a user starts it. `threads=<cores>` is what torch chose by
itself before the framework chose (one thread per core); `threads=auto` is the framework's choice
(src/makemore_lab/threads.py). steps/s is summary.json's (training steps over the fit's wall time).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STEPS = {"wavenet": 4000, "mlp": 20000}


def start(model: str, steps: int, threads: str, out_dir: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "train.py"),
            f"model={model}",
            f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={steps}",
            "callbacks=none",
            "logger=none",
            "num_samples=0",
            f"threads={threads}",
            f"hydra.run.dir={out_dir}",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def rates(model: str, steps: int, threads: str, copies: int) -> list[float]:
    """steps/s of each of `copies` runs started together."""
    with tempfile.TemporaryDirectory() as tmp:
        procs = [start(model, steps, threads, Path(tmp) / str(i)) for i in range(copies)]
        for proc in procs:
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"error: a run failed: {err.strip().splitlines()[-1:]}")
        return [
            json.loads((Path(tmp) / str(i) / "summary.json").read_text())["steps_per_second"] for i in range(copies)
        ]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["wavenet", "mlp"])
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"# {cores} cores; torch's own default: {cores} threads per run")
    print("| model | threads | alone steps/s | two at once: each steps/s | each ÷ best alone |")
    print("|---|---|---:|---:|---:|")
    for model in args.models:
        steps = args.steps or DEFAULT_STEPS.get(model, 4000)
        settings = {"1": "1", f"{cores} (torch's default)": str(cores), "auto": "auto"}
        alone = {name: rates(model, steps, value, 1)[0] for name, value in settings.items()}
        best = max(alone.values())
        for name, value in settings.items():
            together = rates(model, steps, value, 2) if value != "1" else None
            cell = f"{sum(together) / 2:,.0f}" if together else "–"
            ratio = f"{sum(together) / 2 / best:.2f}" if together else "–"
            print(f"| {model} | {name} | {alone[name]:,.0f} | {cell} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
