"""Run the lecture presets (configs/experiment/) and write the results table: docs/results.md and docs/results.json.

    python scripts/reproduce.py                                  # every preset, as configured (long)
    python scripts/reproduce.py lecture3_mlp lecture5_wavenet    # a subset
    python scripts/reproduce.py --steps 200 --out /tmp/quick     # a smoke test of the whole pipeline
    python scripts/reproduce.py --collect lecture3_mlp           # table runs already in logs/reproduce/

Each preset runs as `python train.py experiment=<preset>` in its own run dir under logs/reproduce/; the table
takes its numbers from that run's summary.json and the lecture's number from the preset's `reference` key.
Rows already in <out>/results.json for presets not run this time are kept, so the table can be filled in parts.
Each row also keeps the run's validation curve, from which scripts/plot_results.py draws docs/results_curves.png.
"""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "src" / "makemore_lab" / "configs"


def all_presets() -> list[str]:
    return sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))


def reference(preset: str) -> dict:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        cfg = compose("train", overrides=[f"experiment={preset}"])
    return dict(cfg.get("reference") or {})


def run_preset(preset: str, steps: int | None, run_root: Path, collect_only: bool = False) -> dict:
    run_dir = run_root / preset
    if collect_only:
        return result_row(preset, run_dir)
    if run_dir.exists():  # a rerun replaces the old run: its event files would mix two curves
        shutil.rmtree(run_dir)
    overrides = [f"experiment={preset}", f"hydra.run.dir={run_dir}", "~callbacks.progress_bar"]
    if steps:  # a short run: validate once, at the end
        overrides += [f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}"]
    print(f"running {preset} ...", file=sys.stderr, flush=True)
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *overrides], cwd=ROOT, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"error: preset {preset} failed:\n{result.stderr[-3000:]}")
    return result_row(preset, run_dir)


def result_row(preset: str, run_dir: Path) -> dict:
    if not (run_dir / "summary.json").exists():
        raise SystemExit(f"error: {run_dir} has no summary.json (the run did not finish)")
    summary = json.loads((run_dir / "summary.json").read_text())
    ref = reference(preset)
    return {
        "preset": preset,
        "model": summary["model"],
        "params": summary["params"],
        "steps": summary["steps"],
        "final_weights_step": summary.get("final_weights_step", summary["steps"]),  # final_weights=best: earlier
        "train_loss": summary["train_loss"],
        "val_loss": summary["val_loss"],
        "test_loss": summary["test_loss"],
        "seconds": summary["train_seconds"],
        "reference_train": ref.get("train"),
        "reference_val": ref.get("val"),
        "reference_source": ref.get("source"),
        "val_curve": val_curve(run_dir),  # for scripts/plot_results.py: the picture comes from this file alone
    }


def val_curve(run_dir: Path) -> list[list[float]]:
    """[[step, val loss], ...] from the run's TensorBoard events, in step order."""
    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(run_dir / "tensorboard"))
    mux.Reload()
    return sorted(
        [e.step, round(e.value, 5)]
        for run, tags in mux.Runs().items()
        if "val/loss" in tags.get("scalars", [])
        for e in mux.Scalars(run, "val/loss")
    )


def fmt(value, spec=".4f") -> str:
    return "–" if value is None else format(value, spec)


def markdown(rows: list[dict]) -> str:
    lines = [
        "| preset | model | params | steps | train | val | test | lecture train / val | val − lecture | time (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        steps = f"{r['steps']:,}"
        if r.get("final_weights_step", r["steps"]) != r["steps"]:
            steps += f" (best: {r['final_weights_step']:,})"
        gap = None if r["reference_val"] is None else r["val_loss"] - r["reference_val"]
        lines.append(
            f"| {r['preset']} | {r['model']} | {r['params']:,} | {steps} | {fmt(r['train_loss'])} | "
            f"{fmt(r['val_loss'])} | {fmt(r['test_loss'])} | {fmt(r['reference_train'])} / {fmt(r['reference_val'])} | "
            f"{fmt(gap, '+.4f')} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("presets", nargs="*", help=f"default: all of {', '.join(all_presets())}")
    parser.add_argument("--steps", type=int, help="override every preset's trainer.max_steps (for a quick check)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where results.md and results.json go")
    parser.add_argument("--runs", type=Path, default=ROOT / "logs" / "reproduce", help="where the run dirs go")
    parser.add_argument("--collect", action="store_true", help="train nothing: table the finished runs in --runs")
    args = parser.parse_args()
    unknown = sorted(set(args.presets) - set(all_presets()))
    if unknown:
        raise SystemExit(f"error: unknown preset(s) {', '.join(unknown)}; choose from {', '.join(all_presets())}")

    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "results.json"
    for preset in args.presets or all_presets():
        row = run_preset(preset, args.steps, args.runs, collect_only=args.collect)
        # Re-read before writing: rows from other presets (or another reproduce.py running beside) are kept.
        rows = {r["preset"]: r for r in json.loads(json_path.read_text())} if json_path.exists() else {}
        rows[preset] = row
        ordered = [rows[p] for p in sorted(rows)]
        json_path.write_text(json.dumps(ordered, indent=2) + "\n")  # after every preset: a long run keeps its work
        (args.out / "results.md").write_text(markdown(ordered))
    print(markdown(ordered))


if __name__ == "__main__":
    main()
