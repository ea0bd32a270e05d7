"""Which search finds the best val loss in the same wall-clock budget on this CPU: a grid population, a pruned (ASHA)
population, a PBT population and Optuna's TPE one trial after another (issue 35's benchmark).

    python scripts/benchmark_search.py                                  # mlp and wavenet, 5,000 steps, 8 members
    python scripts/benchmark_search.py --models mlp --steps 2000 --members 8 --threads 1
    python scripts/benchmark_search.py --models mlp --budget-seconds 120 --json docs/benchmark_search.json

Every method is whole `python train.py -m ...` commands (subprocesses, timed from start to exit: start-up, data,
training, final reports, the sweep summary), over one search space per model:

- mlp: `optimizer.lr` in [0.01, 1] (log) x `model.gain` (lecture 3's init gain of the hidden weights);
- wavenet: `optimizer.lr` in [0.01, 1] (log) x `optimizer.momentum` (its BatchNorms make the init gain moot).

The methods, with `--members` N (the population size) and `--steps` S (trainer.max_steps of every trial; each
validates every S/10 steps):

- **grid**: the basic sweeper's grid under the population launcher: N points (lrs log-spaced x 2 values of the
  second key; N odd: lrs only), all trained to S steps as one population.
- **asha**: `hparams_search=mlp_asha` (for another model: the same sweeper, pruner and launcher settings over that
  model's space on the command line): N random trials as one population of N, each member reporting its val loss
  to its own trial of a SQLite study in its sweep dir; successive halving (min_resource S/10, the preset's
  reduction factor 3) prunes the losers at each rung.
- **pbt**: `pbt=default` with the population launcher over the grid's N points (skipped, with a note, until
  `src/makemore_lab/configs/pbt/default.yaml` exists).
- **tpe**: Optuna's TPE sampler under the basic launcher: one trial (one run of S steps) after another.

**The equal budget.** The grid runs first; its wall time is the budget (or `--budget-seconds`). asha and pbt train
one population of the grid's N members and S steps: the same work by construction, and their wall times are
reported, not cut. tpe asks for trials until the budget is spent: at the budget its command is stopped as Ctrl-C
stops it (SIGINT: the running trial saves its checkpoint and ends without a result), and only the trials that
finished count.

**What is read.** Each method's sweep dir (`--out`, a temporary dir by default): every job's summary.json
(sweep_summary.read_jobs, as `summary.md` is made). Best val loss: the lowest `val_loss` of the trials that trained
every step (a pruned member's is at its rung: not comparable, as Optuna's best ignores PRUNED trials); trials: the
jobs with a summary.json, and how many of them were pruned; member-steps: the steps every trial trained, summed
(a pruned member counts its steps until its rung). Once a quarter of a population has ended, it continues as a
smaller population of the rest (repacking), so the member-steps pruning saves show in ASHA's wall time.

On a CPU, `--threads` (2) is each command's torch threads (threads=N and OMP_NUM_THREADS=N), as in
scripts/benchmark_population.py; on a machine loaded by other work use `--threads 1`. `--repeats` R runs every method
R times with seeds 0..R-1 (the runs' `seed` and the samplers'); the table shows the mean (± the std over repeats).
`--json PATH` adds one entry per invocation to PATH: its date, command, rows, table and the issue's ASHA target.
"""

import argparse
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmark_record import append_run

from makemore_lab.sweep_summary import read_jobs

ROOT = Path(__file__).resolve().parents[1]
PBT_CONFIG = ROOT / "src" / "makemore_lab" / "configs" / "pbt" / "default.yaml"
METHODS = ["grid", "asha", "pbt", "tpe"]
LR = (0.01, 1.0)
# model -> (the second searched key, its grid values, its search interval)
SECOND_KEY = {
    "mlp": ("model.gain", (1.0, 5 / 3), "tag(log, interval(0.5, 3.0))"),
    "wavenet": ("optimizer.momentum", (0.0, 0.9), "interval(0.0, 0.9)"),
}
ASHA_REDUCTION_FACTOR = 3  # the preset's (configs/hparams_search/mlp_asha.yaml)
STOP_GRACE_SECONDS = 120  # after SIGINT at the budget: time to save the running trial and exit


def lrs(points: int) -> list[str]:
    """`points` learning rates log-spaced over [0.01, 1], as Hydra sweep values."""
    low, high = map(math.log10, LR)
    return [f"{10 ** (low + (high - low) * i / max(points - 1, 1)):.4g}" for i in range(points)]


def grid(model: str, members: int) -> list[str]:
    """The grid's sweep overrides: `members` points, lrs x the second key's two values (odd: lrs only)."""
    key, values, _ = SECOND_KEY[model]
    if members % 2 or members < 4:
        return [f"optimizer.lr={','.join(lrs(members))}"]
    return [f"optimizer.lr={','.join(lrs(members // 2))}", f"{key}={','.join(f'{v:.4g}' for v in values)}"]


def asha(model: str, members: int, steps: int, seed: int) -> list[str]:
    """The ASHA search of `members` trials as one population: the preset for the MLP; for another model the preset's
    sweeper settings on the command line, over that model's space (the preset's params name model.gain, which
    only the MLP has)."""
    key, _, interval = SECOND_KEY[model]
    if model == "mlp":
        search = ["hparams_search=mlp_asha"]
    else:
        search = [
            "hydra/sweeper=optuna",
            "hydra/sweeper/pruner=successive_halving",
            "hydra/launcher=population",
            f"hydra.sweeper.pruner.reduction_factor={ASHA_REDUCTION_FACTOR}",
            "hydra.sweeper.storage=sqlite:///${hydra.sweep.dir}/optuna.db",
            f"optimizer.lr=tag(log, interval({LR[0]}, {LR[1]}))",
            f"{key}={interval}",
        ]
    return [
        *search,
        f"hydra.sweeper.n_trials={members}",
        f"hydra.sweeper.n_jobs={members}",
        f"hydra.sweeper.sampler.seed={seed}",
        f"hydra.sweeper.sampler.n_startup_trials={members}",  # one batch: random trials, pruned by their rungs
        f"hydra.sweeper.pruner.min_resource={val_interval(steps)}",
    ]


def tpe(model: str, seed: int) -> list[str]:
    key, _, interval = SECOND_KEY[model]
    return [
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=10000",  # until the budget stops it
        f"hydra.sweeper.sampler.seed={seed}",
        "hydra.sweeper.sampler.n_startup_trials=3",  # TPE after three random trials: a budget holds few
        f"optimizer.lr=tag(log, interval({LR[0]}, {LR[1]}))",
        f"{key}={interval}",
    ]


def val_interval(steps: int) -> int:
    return max(steps // 10, 1)


def pbt_interval(steps: int) -> int:
    """PBT's exploit/explore rounds: every second validation (4 rounds in a run; it ranks members by val loss)."""
    return 2 * val_interval(steps)


def common(model: str, steps: int, threads: int, seed: int, extra: list[str]) -> list[str]:
    return [
        f"model={model}",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={val_interval(steps)}",
        "trainer.accelerator=cpu",
        "~callbacks.progress_bar",
        f"threads={threads}",
        f"seed={seed}",
        *extra,
    ]


def run(command: list[str], threads: int, budget: float | None = None) -> tuple[float, bool, str]:
    """(wall seconds from start to exit, stopped by the budget, its output's last line) of one train.py command.
    With a budget, SIGINT at the budget (as Ctrl-C). A command that fails before its budget raises CommandFailed with that line."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *command], cwd=ROOT, env=env, stdout=out, stderr=out, text=True
        )
        stopped = False
        try:
            process.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            stopped = True
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        seconds = time.perf_counter() - start
        out.seek(0)
        output = out.read()
    if process.returncode != 0 and not stopped:
        lines = [line for line in output.strip().splitlines() if line.strip()]
        raise CommandFailed(lines[-1] if lines else f"exit {process.returncode}", output)
    return seconds, stopped, output


class CommandFailed(Exception):
    def __init__(self, line: str, output: str):
        super().__init__(line)
        self.output = output


def results(sweep_dir: Path) -> dict:
    """What the sweep found, from its jobs' summary.json files."""
    jobs = read_jobs(sweep_dir) if sweep_dir.is_dir() else []
    finished = [job for job in jobs if job["summary"]]
    errors = [job["error"] for job in jobs if job["error"]]
    complete = [
        job
        for job in finished
        if "pruned" not in job["summary"] and math.isfinite(job["summary"].get("val_loss") or math.inf)
    ]
    best = min(complete, key=lambda job: job["summary"]["val_loss"], default=None)
    return {
        "best_val_loss": best["summary"]["val_loss"] if best else None,
        "best_job": best["job"] if best else None,
        "best_overrides": best["overrides"] if best else None,
        "trials": len(finished),
        "pruned": sum("pruned" in job["summary"] for job in finished),
        "member_steps": sum(job["summary"]["steps"] for job in finished),
        "failed": len(errors),
        "first_error": errors[0] if errors else None,
    }


def method_command(method: str, model: str, args, seed: int, sweep_dir: Path) -> list[str]:
    base = ["-m", *common(model, args.steps, args.threads, seed, args.overrides), f"hydra.sweep.dir={sweep_dir}"]
    if method == "grid":
        return [*base, "hydra/launcher=population", *grid(model, args.members)]
    if method == "asha":
        return [*base, *asha(model, args.members, args.steps, seed)]
    if method == "pbt":
        return [
            *base,
            "pbt=default",
            f"pbt.interval={pbt_interval(args.steps)}",
            "hydra/launcher=population",
            *grid(model, args.members),
        ]
    return [*base, *tpe(model, seed)]


def measure(model: str, seed: int, args, out_dir: Path) -> list[dict]:
    """One repeat of every method on `model`: the grid first (its wall time is the budget), then the others."""
    rows, budget = [], args.budget_seconds
    for method in args.methods:
        row = {"model": model, "method": method, "seed": seed, "steps": args.steps, "members": args.members}
        sweep_dir = out_dir / f"{model}-{method}-seed{seed}"
        row["sweep_dir"] = str(sweep_dir)
        if method == "pbt" and not PBT_CONFIG.is_file():
            rows.append({**row, "note": f"skipped: {PBT_CONFIG.relative_to(ROOT)} does not exist yet"})
            continue
        command = method_command(method, model, args, seed, sweep_dir)
        row["command"] = "python train.py " + " ".join(command)
        try:
            seconds, stopped, _ = run(command, args.threads, budget if method == "tpe" else None)
        except CommandFailed as err:
            if method in ("grid", "asha"):
                raise SystemExit(f"error: train.py {' '.join(command)} failed:\n{err.output[-3000:]}") from None
            rows.append({**row, "note": f"failed: {err}"})
            continue
        if method == "grid" and budget is None:
            budget = seconds
        row.update(seconds=seconds, budget_seconds=budget, stopped_at_budget=stopped, **results(sweep_dir))
        rows.append(row)
    return rows


def mean_std(values: list[float], digits: int) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per (model, method) over the repeats."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["method"]), []).append(row)
    merged = []
    for (model, method), runs in groups.items():
        measured = [r for r in runs if "seconds" in r]
        best = [r["best_val_loss"] for r in measured if r["best_val_loss"] is not None]
        merged.append(
            {
                "model": model,
                "method": method,
                "repeats": len(runs),
                "seconds": [r["seconds"] for r in measured],
                "best_val_loss": best,
                "trials": sum(r["trials"] for r in measured),
                "pruned": sum(r["pruned"] for r in measured),
                "member_steps": sum(r["member_steps"] for r in measured),
                "stopped": sum(r["stopped_at_budget"] for r in measured),
                "failed": sum(r["failed"] for r in measured),
                "notes": sorted(
                    {r["note"] for r in runs if r.get("note")}
                    | {r["first_error"] for r in measured if r["first_error"]}
                ),
            }
        )
    return merged


def markdown(merged: list[dict]) -> str:
    lines = [
        "| model | method | wall time (s) | best val loss | trials (pruned) | member-steps |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in merged:
        if not r["seconds"]:
            lines.append(f"| {r['model']} | {r['method']} | – | – | – | – ({'; '.join(r['notes'])}) |")
            continue
        per = f" per repeat, {r['repeats']} repeats" if r["repeats"] > 1 else ""
        stopped = " (stopped at the budget)" if r["stopped"] else ""
        failed = f"; {r['failed']} failed" if r["failed"] else ""
        lines.append(
            f"| {r['model']} | {r['method']} | {mean_std(r['seconds'], 1)}{stopped} | "
            f"{mean_std(r['best_val_loss'], 4)} | {r['trials']} ({r['pruned']}){per}{failed} | {r['member_steps']:,} |"
        )
    notes = [f"- {r['model']} {r['method']}: {note}" for r in merged if r["seconds"] for note in r["notes"]]
    return (
        "\n".join(lines)
        + "\n"
        + ("\nNotes (a failed trial's reason, first of its sweep):\n" + "\n".join(notes) + "\n" if notes else "")
    )


def asha_target(merged: list[dict]) -> list[dict]:
    """The issue's target per model: the pruned population within 0.005 of the grid's best val loss in <= 0.5x the
    grid's wall time."""
    targets = []
    by = {(r["model"], r["method"]): r for r in merged}
    for model in dict.fromkeys(r["model"] for r in merged):
        grid_row, asha_row = by.get((model, "grid")), by.get((model, "asha"))
        if not (grid_row and asha_row and grid_row["best_val_loss"] and asha_row["best_val_loss"]):
            continue
        gap = statistics.mean(asha_row["best_val_loss"]) - statistics.mean(grid_row["best_val_loss"])
        ratio = statistics.mean(asha_row["seconds"]) / statistics.mean(grid_row["seconds"])
        targets.append(
            {
                "model": model,
                "asha_minus_grid_val_loss": gap,
                "asha_over_grid_seconds": ratio,
                "met": gap <= 0.005 and ratio <= 0.5,
            }
        )
    return targets


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(SECOND_KEY), default=["mlp", "wavenet"])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS, help="grid runs first when given")
    parser.add_argument("--steps", type=int, default=5000, help="trainer.max_steps of every trial")
    parser.add_argument("--members", type=int, default=8, help="the population size (grid points, ASHA trials)")
    parser.add_argument("--budget-seconds", type=float, help="tpe's wall-clock budget (default: the grid's wall time)")
    parser.add_argument("--repeats", type=int, default=1, help="every method with seeds 0..R-1")
    parser.add_argument("--threads", type=int, default=2, help="the CPU budget of each command (torch threads)")
    parser.add_argument("--out", type=Path, help="keep the sweep dirs here (default: a temporary dir, removed)")
    parser.add_argument("--json", type=Path, help="add this invocation's rows and table to this file")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every command, e.g. data.path=...")
    args = parser.parse_args()
    if args.members < 2 or args.steps < 10 or args.repeats < 1 or args.threads < 1:
        raise SystemExit("error: --members >= 2, --steps >= 10, --repeats >= 1 and --threads >= 1")
    if "tpe" in args.methods and "grid" not in args.methods and args.budget_seconds is None:
        raise SystemExit("error: tpe's budget is the grid's wall time: add grid to --methods, or --budget-seconds")
    args.methods = sorted(args.methods, key=METHODS.index)  # the grid first: it sets the budget
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise SystemExit("error: the asha and tpe searches need optuna: pip install -e '.[optuna]'") from None

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.out or Path(tmp)
        for model in args.models:
            for seed in range(args.repeats):
                rows += measure(model, seed, args, out_dir)
    merged = aggregate(rows)
    table = markdown(merged)
    targets = asha_target(merged)
    print(table, end="")
    for t in targets:
        print(
            f"{t['model']}: asha's best val loss {t['asha_minus_grid_val_loss']:+.4f} against the grid's, in "
            f"{t['asha_over_grid_seconds']:.2f}x its wall time (target: <= +0.005 in <= 0.5x: "
            f"{'met' if t['met'] else 'not met'})"
        )
    if args.json:
        append_run(args.json, "scripts/benchmark_search.py", rows, table, asha_target=targets)


if __name__ == "__main__":
    main()
