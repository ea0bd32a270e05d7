"""Re-summarise a sweep dir: summary.csv and summary.md, one row per job, best val loss first.

    python scripts/sweep_summary.py logs/train/multiruns/2026-01-01_12-00-00_000000

A multirun writes these itself when it ends (configs/hydra/default.yaml); run this for a sweep that was interrupted,
had a failed job, or whose jobs were rerun. Prints the markdown table.
"""

import argparse
import sys
from pathlib import Path

from makemore_lab.sweep_summary import read_jobs, write_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a multirun's sweep dir (holds 0/, 1/, ... and multirun.yaml)")
    sweep_dir = parser.parse_args().sweep_dir
    if not sweep_dir.is_dir():
        sys.exit(f"error: not a directory: {sweep_dir}")
    if not read_jobs(sweep_dir):
        sys.exit(f"error: no job dirs (with .hydra/overrides.yaml) under {sweep_dir}")
    write_summary(sweep_dir)
    print((sweep_dir / "summary.md").read_text(), end="")


if __name__ == "__main__":
    main()
