"""PBT against the same population without it: the best member's val loss after the same steps (issue 35's target:
PBT's best beats the best fixed lr by >= 0.01 nats on the lecture WaveNet).

    python scripts/benchmark_pbt.py                                   # hparams_search=wavenet_pbt, 20,000 steps
    python scripts/benchmark_pbt.py --steps 6000 --interval 1000 model.n_hidden=64

Both are one `python train.py -m hparams_search=wavenet_pbt ...` command (8 members, one per lr of the preset),
one with its `pbt` and one without (`~pbt`); every member's val loss is read from its summary.json.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sweep(out: Path, steps: int, interval: int, pbt: bool, extra: list[str]) -> tuple[float, list[dict]]:
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "hparams_search=wavenet_pbt",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={interval // 2}",
        f"pbt.interval={interval}" if pbt else "~pbt",
        "~callbacks.progress_bar",
        "logger=none",
        f"hydra.sweep.dir={out}",
        *extra,
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    return seconds, [json.loads(p.read_text()) for p in sorted(out.glob("*/summary.json"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--interval", type=int, default=2000)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for both sweeps")
    args = parser.parse_args()
    print("| population of 8 | steps | wall time (s) | best val loss | its lr at the end | members that copied |")
    print("|---|---:|---:|---:|---|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for pbt in (False, True):
            seconds, jobs = sweep(Path(tmp) / str(pbt), args.steps, args.interval, pbt, args.overrides)
            best = min(jobs, key=lambda job: job["val_loss"])
            lr = (
                best["pbt"]["hyperparameters"]["optimizer.lr"]
                if pbt
                else next(o.split("=", 1)[1] for o in best["overrides"] if o.startswith("optimizer.lr="))
            )
            copied = sum(bool(job["pbt"]["lineage"]) for job in jobs) if pbt else 0
            name = "PBT (pbt=default)" if pbt else "fixed lrs (~pbt)"
            print(f"| {name} | {args.steps:,} | {seconds:.0f} | {best['val_loss']:.4f} | {lr} | {copied} |", flush=True)


if __name__ == "__main__":
    main()
