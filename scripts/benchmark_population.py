"""What a sweep costs against one run: a 16-point lr sweep as whole commands under the basic, joblib and population
launchers, next to one run of the same config.

    python scripts/benchmark_population.py                             # mlp and wavenet, 20,000 steps, 2 threads
    python scripts/benchmark_population.py --models mlp --steps 2000 --repeats 3 --launchers basic population
    python scripts/benchmark_population.py --models mlp --launchers population population-one-process --repeats 2
    python scripts/benchmark_population.py --device cuda --members 64 256   # a GPU: one run vs populations of N

Every measurement is one `python train.py ...` subprocess timed from start to exit: start-up, data, training, the
final exact losses and samples, the sweep summary. The sweep's lrs are log-spaced over [0.01, 1] (SGD, the lecture
models' optimizer); everything else is the model's default config, without the progress bar. On a CPU, `--threads`
(2) is the budget each launcher gets: one run, each basic job and the population use that many torch threads; the
joblib launcher runs `--joblib-jobs` (default: `--threads`) jobs at once with one thread each. The best of
`--repeats` is kept (the least disturbed by other work on the machine); the launchers alternate within each repeat,
so that load from elsewhere hits them alike. On a loaded machine use `--threads 1`: two OpenMP threads that must
meet at every operation collapse when other processes hold the cores (measured here: 4 steps/s instead of 106).

`population-one-process` is the population launcher with `hydra.launcher.processes=1` (every group in one process,
with all the threads), next to `population`'s default (on a CPU, parts side by side, one process per thread:
src/makemore_lab/population/processes.py): an A/B of the two layouts in the same minutes.

Each row also says when the command built its first model (from its console's timestamps: the start-up before
training, Python, Hydra, composing and preparing the jobs, the imports, the data), and each sweep row how its jobs
were trained: from every job's summary.json, the population sizes (the engine adds "population_size"; a job
without it ran alone), and the members' median training steps/s against one run's (the GPU target: 256 MLP members
at >= 0.5x one model's steps/s). `--json` (docs/benchmark_population.json) gains one entry per invocation: its date, command, rows and table.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from benchmark_record import append_run

from makemore_lab.sweep_summary import read_jobs

ROOT = Path(__file__).resolve().parents[1]
LAUNCHERS = ["basic", "joblib", "population", "population-one-process"]
DEFAULT_LAUNCHERS = LAUNCHERS[:3]  # population-one-process: the population launcher with hydra.launcher.processes=1


def lrs(points: int) -> list[str]:
    """`points` learning rates log-spaced over [0.01, 1], as Hydra sweep values."""
    return [f"{10 ** (-2 + 2 * i / max(points - 1, 1)):.4g}" for i in range(points)]


# train.build_run's line for each model it builds ("[<time>][...] - wavenet: 76,579 params, vocab 27, ..."; a
# population member's: "[<time>][HYDRA] [#0] wavenet: 76,579 params, ...")
MODEL_BUILT = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\].*: [\d,]+ params, vocab ", re.MULTILINE)


def startup_seconds(output: str, started: float) -> float | None:
    """Seconds from a command's start (time.time()) to the first model it built, from its console: the start-up
    before training (Python, Hydra, composing and preparing the jobs, the imports, the data)."""
    match = MODEL_BUILT.search(output)
    if match is None:
        return None
    built = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(match.group(2)) / 1000
    return built - started


def timed(command: list[str], threads: int) -> tuple[float, float | None]:
    """(wall seconds start to exit, start-up seconds) of one train.py command; a failed command ends the benchmark
    with its stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started, start = time.time(), time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *command], cwd=ROOT, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"error: train.py {' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return seconds, startup_seconds(result.stdout + result.stderr, started)


def config(model: str, steps: int, device: str, extra: list[str]) -> list[str]:
    accelerator = "gpu" if device == "cuda" else "cpu"
    return [
        f"model={model}",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={min(steps, 2000)}",
        f"trainer.accelerator={accelerator}",
        "~callbacks.progress_bar",
        *extra,
    ]


def launcher_overrides(launcher: str, threads: int, joblib_jobs: int) -> tuple[list[str], int]:
    """(overrides, torch threads per job) for a sweep under `launcher`: `threads` torch threads per process, except
    under joblib, which runs `joblib_jobs` processes at once with one thread each."""
    if launcher == "joblib":
        return ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={joblib_jobs}", "threads=1"], 1
    if launcher == "population-one-process":  # each group in one process (the layout before processes.py)
        return ["hydra/launcher=population", "hydra.launcher.processes=1", f"threads={threads}"], threads
    selected = [] if launcher == "basic" else [f"hydra/launcher={launcher}"]
    return [*selected, f"threads={threads}"], threads


def sweep_jobs(sweep_dir: Path) -> dict:
    """How the sweep's jobs were trained, from their summary.json files."""
    jobs = read_jobs(sweep_dir)
    finished = [job["summary"] for job in jobs if job["summary"]]
    sizes = [summary.get("population_size", 1) for summary in finished]
    rates = [summary["steps_per_second"] for summary in finished if summary.get("steps_per_second")]
    return {
        "jobs": len(jobs),
        "failed": len(jobs) - len(finished),
        "population_sizes": sorted({size: sizes.count(size) // size for size in sizes}.items(), reverse=True),
        "member_steps_per_s": statistics.median(rates) if rates else None,
    }


def one_run_steps_per_s(run_dir: Path) -> float | None:
    return json.loads((run_dir / "summary.json").read_text()).get("steps_per_second")


def measure(model: str, steps: int, points: int, launchers: list[str], args) -> list[dict]:
    """Best-of-repeats wall time of one run and of the sweep under each launcher."""
    base = config(model, steps, args.device, args.overrides)
    best: dict[str, dict] = {}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            seconds, startup = timed([*base, f"threads={args.threads}", f"hydra.run.dir={run_dir}"], args.threads)
            if seconds < best.get("one run", {}).get("seconds", float("inf")):
                best["one run"] = {
                    "seconds": seconds,
                    "startup_seconds": startup,
                    "jobs": 1,
                    "failed": 0,
                    "population_sizes": [],
                    "member_steps_per_s": one_run_steps_per_s(run_dir),
                }
            for launcher in launchers:
                sweep_dir = Path(tmp) / launcher
                overrides, threads = launcher_overrides(launcher, args.threads, args.joblib_jobs or args.threads)
                seconds, startup = timed(
                    ["-m", *base, *overrides, f"optimizer.lr={','.join(lrs(points))}", f"hydra.sweep.dir={sweep_dir}"],
                    threads,
                )
                if seconds < best.get(launcher, {}).get("seconds", float("inf")):
                    best[launcher] = {"seconds": seconds, "startup_seconds": startup, **sweep_jobs(sweep_dir)}
    one = best["one run"]
    return [
        {
            "model": model,
            "device": args.device,
            "steps": steps,
            "points": points,
            "launcher": name,
            "threads": args.threads,
            "joblib_jobs": args.joblib_jobs or args.threads,
            **row,
            "x_one_run": row["seconds"] / one["seconds"],
            "member_vs_one_run_steps_per_s": (
                row["member_steps_per_s"] / one["member_steps_per_s"]
                if row["member_steps_per_s"] and one["member_steps_per_s"]
                else None
            ),
        }
        for name, row in best.items()
    ]


def trained_as(row: dict) -> str:
    if row["launcher"] == "one run":
        return "one process"
    sizes = ", ".join(f"{count} × {size}" for size, count in row["population_sizes"])
    ran = f"populations: {sizes}" if any(size > 1 for size, _ in row["population_sizes"]) else "one job at a time"
    if row["launcher"] == "joblib":
        ran = f"{row['joblib_jobs']} jobs at a time, 1 thread each"
    return ran + (f"; {row['failed']} failed" if row["failed"] else "")


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | device | steps | launcher | jobs | wall time (s) | × one run | first model built at (s) | "
        "trained as | member steps/s vs one run |",
        "|---|---|---:|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        ratio = "–" if r["member_vs_one_run_steps_per_s"] is None else f"{r['member_vs_one_run_steps_per_s']:.2f}"
        startup = "–" if r.get("startup_seconds") is None else f"{r['startup_seconds']:.1f}"
        lines.append(
            f"| {r['model']} | {r['device']} | {r['steps']:,} | {r['launcher']} | {r['jobs']} | "
            f"{r['seconds']:.1f} | {r['x_one_run']:.2f} | {startup} | {trained_as(r)} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mlp", "wavenet"])
    parser.add_argument("--steps", type=int, default=20_000, help="trainer.max_steps of every run (the issue's 20,000)")
    parser.add_argument("--points", type=int, default=16, help="lr values in the sweep (CPU)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="the CPU budget of each command (torch threads)")
    parser.add_argument("--joblib-jobs", type=int, help="joblib's n_jobs, each with 1 thread (default: --threads)")
    parser.add_argument("--launchers", nargs="+", choices=LAUNCHERS, default=DEFAULT_LAUNCHERS)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--members",
        type=int,
        nargs="+",
        default=[64, 256],
        help="with --device cuda: population sizes to time against one run (population launcher only)",
    )
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmark_population.json")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every command, e.g. data.batch_size=64")
    args = parser.parse_args()
    if "joblib" in args.launchers and args.device == "cpu":
        try:
            import hydra_plugins.hydra_joblib_launcher  # noqa: F401
        except ImportError:
            raise SystemExit(
                "error: the joblib launcher is not installed: pip install -e '.[joblib]', or leave it out "
                "with --launchers basic population"
            ) from None

    rows = []
    for model in args.models:
        if args.device == "cuda":  # hundreds of solo runs would take hours: one run against each population size
            for members in args.members:
                rows += measure(model, args.steps, members, ["population"], args)
        else:
            rows += measure(model, args.steps, args.points, args.launchers, args)
    table = markdown(rows)
    print(table, end="")
    append_run(args.json, "scripts/benchmark_population.py", rows, table)


if __name__ == "__main__":
    main()
