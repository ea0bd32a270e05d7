"""One table per sweep: when a multirun ends, summary.csv and summary.md in its sweep dir, best val loss first.

Each row is one job: its overrides as columns (those its summary.json recorded, else <job dir>/.hydra/overrides.yaml,
which Hydra rewrites whenever a job starts in that dir), then the numbers from its summary.json; a job that was
interrupted and resumed (Ctrl-C, SIGTERM, a SLURM time limit or requeue) is timed over all its fits (its
segments.json holds the interrupted ones, resume.py). A job that failed
(its failure.json, see sweep_policy.py) is listed last with its one-line reason; one with neither file (still running, or killed) is listed last with empty numbers.
A job that an Optuna pruner stopped (its summary.json's `pruned`: docs/optuna.md) is listed after the finished ones,
"pruned at step N" with its last reported val loss; summary.csv then has pruned_step and pruned_val_loss columns. The
`optuna_trial` key the sweeper gives such jobs is no column (the job dir is the trial's number).
The table is rewritten after every job too, so a sweep stopped by Ctrl-C or a kill keeps the table of the jobs done;
when the multirun ends, its path is logged and the table printed (its best PRINTED_ROWS rows).
Jobs that differ only in `seed` and `data.seed` (a config run over several seeds) are also one row over their seeds:
the mean +/- standard deviation (n - 1) of each loss over the finished ones, and n. summary.md and the console show
that table first, then the per-job one; summary.csv holds the per-job rows (n = 1) and then the seed rows (their job
column lists the jobs; seed columns are empty; *_std columns hold the deviations).
Enabled for every multirun by configs/hydra/default.yaml; `python scripts/sweep_summary.py <sweep dir>` re-summarises.
"""

import csv
import io
import json
import logging
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from makemore_lab.atomic_write import write_text_atomically
from makemore_lab.diagnostics.health import verdict_word
from makemore_lab.ranks import is_rank_zero

log = logging.getLogger(__name__)

# column -> summary.json key
METRICS = {
    "params": "params",
    "steps": "steps",
    "train_loss": "train_loss",
    "val_loss": "val_loss",
    "test_loss": "test_loss",
    "time_s": "train_seconds",
}


class SweepSummary(Callback):
    """Hydra callback (hydra.callbacks in configs/hydra/default.yaml): summarises the sweep dir after each job and
    when the multirun ends."""

    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN and rank_zero():
            try:
                rows = write_summary(Path(config.hydra.sweep.dir))  # quietly: a population's members end all at once
            except OSError as err:  # a full disk: the job's own files say what it did; the multirun's end says more
                log.warning("cannot update the sweep's table (%s: %s)", err.strerror, err.filename)
                return
            log.debug("sweep summary updated (%d jobs)", len(rows))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """The tables, their path, and the table itself on the console (its best PRINTED_ROWS rows)."""
        if not rank_zero():
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            rows = write_summary(sweep_dir)
        except OSError as err:  # one line and a failed exit, not Hydra's warning about a callback
            print(
                f"error: cannot write {err.filename} ({err.strerror}): each job's results are in its own dir; "
                f"python scripts/sweep_summary.py {sweep_dir} writes the table again",
                file=sys.stderr,
            )
            sys.exit(1)
        log.info("sweep summary (%d jobs): %s", len(rows), sweep_dir / "summary.md")
        table = first_table((sweep_dir / "summary.md").read_text())
        more = len(table) - 2 - PRINTED_ROWS
        print(
            "\n".join(table[: 2 + PRINTED_ROWS])
            + (f"\n... {more} more in summary.md" if more > 0 else "")
            + ("\n(over seeds; each job's own row: summary.md)" if table[0].startswith("| jobs |") else ""),
            flush=True,
        )


PRINTED_ROWS = 20  # a 500-job search prints its best 20; summary.md and summary.csv hold every job
SEED_KEYS = ("seed", "data.seed")  # jobs that differ only in these are one config over several seeds
LOSSES = ("train_loss", "val_loss", "test_loss")
HIDDEN_OVERRIDES = ("optuna_trial",)  # the Optuna sweeper's, for its pruner: the job dir already names the trial
PRUNED_COLUMNS = ("pruned_step", "pruned_val_loss")


def first_table(markdown_text: str) -> list[str]:
    """The lines of the first table of summary.md (the seeds' table where there is one, else the jobs')."""
    table = []
    for line in markdown_text.splitlines():
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    return table


def rank_zero() -> bool:
    """An extra DDP rank (Lightning's, torchrun's, SLURM's task) runs the whole command again; one writer is enough."""
    return is_rank_zero()


def job_sort_key(name: str):
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def parse_override(override: str) -> tuple[str, str]:
    """'optimizer.lr=0.1' -> ('optimizer.lr', '0.1'); a deletion such as '~callbacks.progress_bar' has no value."""
    key, _, value = override.partition("=")
    return key, value


def read_jobs(sweep_dir: Path) -> list[dict]:
    """Every job dir under sweep_dir (one holding .hydra/overrides.yaml): name, overrides, summary.json or None."""
    jobs = []
    for overrides_file in sweep_dir.rglob("overrides.yaml"):
        if overrides_file.parent.name != ".hydra":
            continue
        job_dir = overrides_file.parent.parent
        summary_file, failure_file = job_dir / "summary.json", job_dir / "failure.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
        segments_file = job_dir / "segments.json"
        segments = json.loads(segments_file.read_text()) if segments_file.is_file() else []
        overrides = (summary or {}).get("overrides")
        if overrides is None:
            overrides = OmegaConf.to_container(OmegaConf.load(overrides_file))
        jobs.append(
            {
                "error": json.loads(failure_file.read_text())["error"] if failure_file.is_file() else None,
                "job": job_dir.relative_to(sweep_dir).as_posix(),
                "overrides": {
                    key: value
                    for key, value in map(parse_override, overrides)
                    if key.lstrip("+~") not in HIDDEN_OVERRIDES
                },
                "summary": summary,
                "interrupted_seconds": sum(segment["seconds"] for segment in segments),
            }
        )
    return sorted(jobs, key=lambda j: job_sort_key(j["job"]))


def summary_rows(jobs: list[dict]) -> tuple[list[str], list[dict]]:
    """(override columns in order of first appearance, rows sorted by val_loss with unfinished jobs last)."""
    override_keys = list(dict.fromkeys(key for job in jobs for key in job["overrides"]))
    rows = []
    for job in jobs:
        row = {"job": job["job"], **{key: job["overrides"].get(key, "") for key in override_keys}}
        summary = job["summary"] or {}
        row.update({column: summary.get(key) for column, key in METRICS.items()})
        if row["time_s"] is not None:  # a resumed job's summary.json times its last fit; the table, all of them
            row["time_s"] += job.get("interrupted_seconds", 0)
        row["health"] = verdict_word(summary.get("health")) if job["summary"] else ""  # the diagnostics' verdict
        row["error"] = job["error"] or ""
        pruned = summary.get("pruned") or {}
        row.update({"pruned_step": pruned.get("step"), "pruned_val_loss": pruned.get("val_loss")})
        row["pbt_copied"] = pbt_note(summary.get("pbt"))
        rows.append(row)

    def by_val_loss(row):  # finished jobs, then pruned ones (fewer steps: not comparable), then the rest
        loss = row["val_loss"]
        if loss is None or math.isnan(loss):
            return (2, math.inf)
        return (int(row["pruned_step"] is not None), loss)

    return override_keys, sorted(rows, key=by_val_loss)  # stable: ties keep job order


def finished(row: dict) -> bool:
    """Trained to its end: not failed, not pruned, with a val loss."""
    return (
        not row["error"]
        and row.get("pruned_step") is None
        and row["val_loss"] is not None
        and math.isfinite(row["val_loss"])
    )


def pruned_note(row: dict) -> str:
    """A pruned job's cell: where it stopped, and the last val loss its pruner saw."""
    if row.get("pruned_step") is None:
        return ""
    return f"pruned at step {row['pruned_step']:,} (val loss {fmt(row['pruned_val_loss'], '.4f')})"


def pbt_note(pbt: dict | None) -> str:
    """A PBT member's cell (population/pbt.py): the hyperparameters it ended with and whom it copied last."""
    if not pbt or not pbt.get("lineage"):
        return ""
    last = pbt["lineage"][-1]
    values = ", ".join(f"{key.partition('.')[2]} {value:.3g}" for key, value in pbt["hyperparameters"].items())
    copies = len(pbt["lineage"])
    return f"{values}; {copies} cop{'y' if copies == 1 else 'ies'}, the last of job {last['from']} at step {last['step']:,}"


def seed_rows(override_keys: list[str], rows: list[dict]) -> list[dict]:
    """One row per group of two or more jobs whose overrides differ only in SEED_KEYS: each loss's mean and standard
    deviation over the group's finished jobs, and their number n; best mean val loss first. [] without seeds."""
    seeds = [key for key in override_keys if key in SEED_KEYS]
    others = [key for key in override_keys if key not in SEED_KEYS]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in others), []).append(row)
    aggregated = []
    for values, members in groups.items():
        if not seeds or len(members) < 2:
            continue
        done = [row for row in members if finished(row)]
        row = {
            "job": ",".join(sorted((r["job"] for r in members), key=job_sort_key)),
            **dict(zip(others, values)),
            **{key: "" for key in seeds},
            "params": members[0]["params"],
            "n": len(done),
            "health": "",
            "error": f"{len(members) - len(done)} of {len(members)} seeds failed"
            + (", pruned" if any(r.get("pruned_step") is not None for r in members) else "")
            + " or unfinished"
            if len(done) < len(members)
            else "",
        }
        for column in ("steps", "time_s", *LOSSES):
            numbers = [r[column] for r in done if r[column] is not None]
            row[column] = statistics.fmean(numbers) if numbers else None
            if column in LOSSES:
                row[f"{column}_std"] = statistics.stdev(numbers) if len(numbers) > 1 else None
        aggregated.append(row)
    return sorted(aggregated, key=lambda r: math.inf if r["val_loss"] is None else r["val_loss"])


def write_csv(path: Path, override_keys: list[str], rows: list[dict], seeds: list[dict] = ()) -> None:
    """Numbers are written in full (repr), so they read back equal to summary.json's. The seed rows, if any, after
    the jobs' (each job's n is 1)."""
    text = io.StringIO(newline="")
    pruned = list(PRUNED_COLUMNS) if any(row["pruned_step"] is not None for row in rows) else []
    extra = ["n", *(f"{loss}_std" for loss in LOSSES)] if seeds else []
    pbt = ["pbt_copied"] if any(row.get("pbt_copied") for row in rows) else []  # only where a PBT member copied another
    fields = ["job", *override_keys, *METRICS, "health", "error", *pruned, *pbt, *extra]
    writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore")  # pruned_*: only where a job was pruned
    writer.writeheader()
    writer.writerows(
        {k: "" if v is None else v for k, v in {**row, **({"n": 1} if seeds else {})}.items()} for row in rows
    )
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in seeds)
    write_text_atomically(path, text.getvalue())  # parallel jobs (joblib) may write the table at once: each whole


def fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def spread(row: dict, loss: str) -> str:
    """A seed row's loss as `mean ± std` (the mean alone where one seed finished)."""
    std = row[f"{loss}_std"]
    return fmt(row[loss], ".4f") + (f" ± {std:.4f}" if std is not None else "")


def markdown(sweep_dir: Path, override_keys: list[str], rows: list[dict]) -> str:
    """The table for humans: only overrides that differ between jobs get a column; the shared ones go above it."""
    varying = [k for k in override_keys if len({row[k] for row in rows}) > 1] or override_keys
    shared = [f"`{k}={rows[0][k]}`" if rows[0][k] else f"`{k}`" for k in override_keys if k not in varying]
    failed = [row for row in rows if row["error"]]
    pruned = [row for row in rows if pruned_note(row)]
    pbt = any(row.get("pbt_copied") for row in rows)
    unfinished = sum(row["val_loss"] is None and not row["error"] for row in rows)
    lines = [f"# Sweep {sweep_dir}", "", f"{len(rows)} jobs, best val loss first (losses in nats)."]
    if shared:
        lines.append(f"Same in every job: {' '.join(shared)}.")
    if pruned:
        lines.append(
            f"{len(pruned)} job(s) pruned (stopped by the Optuna pruner, their last.ckpt kept): listed after the "
            "finished ones, with the step and the last val loss the pruner saw."
        )
    if pbt:
        lines.append(
            "pbt, copied: the hyperparameters a member ended with, after copying better members (population-based training; "
            "its columns on the left are the values it started from)."
        )
    if failed:
        lines.append(f"{len(failed)} job(s) failed: listed last, with the reason.")
    if unfinished:
        lines.append(f"{unfinished} job(s) have no summary.json (unfinished or killed): listed last.")
    seeds = seed_rows(override_keys, rows)
    if seeds:
        per_config = [k for k in varying if k not in SEED_KEYS]
        lines += [
            "",
            f"Over seeds ({', '.join(k for k in override_keys if k in SEED_KEYS)}): mean ± standard deviation "
            "over each config's finished seeds (n), best mean val loss first; each job below.",
            "",
            "| jobs | "
            + " | ".join(per_config)
            + (" | " if per_config else "")
            + "n | train_loss | val_loss | test_loss | time (s) | failed |",
            "|---|" + "---|" * len(per_config) + "---:|---:|---:|---:|---:|---|",
        ]
        for row in seeds:
            cells = [
                row["job"],
                *(row[k] for k in per_config),
                row["n"],
                *(spread(row, loss) for loss in LOSSES),
                fmt(row["time_s"], ".1f"),
                row["error"],
            ]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += [
        "",
        "| job | "
        + " | ".join(varying)
        + " | params | steps | train_loss | val_loss | test_loss | time (s) | health | "
        + ("pruned | " if pruned else "")
        + ("pbt: copied | " if pbt else "")
        + "failed |",
        "|---:|"
        + "---|" * len(varying)
        + "---:|---:|---:|---:|---:|---:|---|"
        + ("---|" if pruned else "")
        + ("---|" if pbt else "")
        + "---|",
    ]
    for row in rows:
        cells = [
            row["job"],
            *(row[k] for k in varying),
            fmt(row["params"], ","),
            fmt(row["steps"], ","),
            fmt(row["train_loss"], ".4f"),
            fmt(row["val_loss"], ".4f"),
            fmt(row["test_loss"], ".4f"),
            fmt(row["time_s"], ".1f"),
            row["health"],
            *([pruned_note(row)] if pruned else []),
            *([row.get("pbt_copied", "")] if pbt else []),
            row["error"].replace("|", "\\|"),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: Path) -> list[dict]:
    """Write <sweep_dir>/summary.csv and summary.md; returns the rows, best val loss first."""
    override_keys, rows = summary_rows(read_jobs(sweep_dir))
    write_csv(sweep_dir / "summary.csv", override_keys, rows, seed_rows(override_keys, rows))
    write_text_atomically(sweep_dir / "summary.md", markdown(sweep_dir, override_keys, rows))
    return rows
