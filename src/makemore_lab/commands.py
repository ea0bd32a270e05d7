"""The command lines a run prints back to its user (resume this run, resume this sweep) and what the user typed,
which they are built from. Nothing here imports torch or Lightning: the population launcher builds them in a
process that never loads either (population/processes.py), and a refused run dir names its resume command before
anything heavy is imported.

Paths are quoted twice over: for Hydra's override grammar (spaces, parentheses, '=' ...) inside, and for the shell
outside, so a printed line runs as printed.
"""

import re
import shlex
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig


def hydra_quote(value: str) -> str:
    """A value for Hydra's override grammar: as is when plain, else double-quoted with backslashes and quotes escaped."""
    if re.fullmatch(r"[\w./:+-]+", value, flags=re.ASCII):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_overrides(task_overrides=None) -> list[str]:
    """What the user typed for this run (Hydra's task overrides), without where it runs and what it resumes from:
    the same for a run and its resumption, so a checkpoint and summary.json record it to tell runs apart."""
    if task_overrides is None:
        task_overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    return [str(o) for o in task_overrides if not str(o).startswith(("ckpt_path=", "hydra.run.dir="))]


def resume_command(out_dir: Path, task_overrides=None) -> str:
    """The command that continues this run: its own overrides, its run dir, its last checkpoint."""
    last = out_dir / "checkpoints" / "last.ckpt"
    return shlex.join([
        "python", "train.py", *run_overrides(task_overrides), f"hydra.run.dir={hydra_quote(str(out_dir))}",
        f"ckpt_path={hydra_quote(str(last))}",
    ])


def sweep_resume_command(out_dirs: list[Path]) -> str:
    """The multirun command again, in the same sweep dir, each job resuming from its own last.ckpt."""
    sweep_dir = Path(*Path(out_dirs[0]).parts[:-1]) if len({Path(d).parent for d in out_dirs}) == 1 else None
    args = [a for a in sys.argv[1:] if not a.startswith(("hydra.sweep.dir=", "ckpt_path="))]
    if "-m" not in args and "--multirun" not in args:
        args.insert(0, "-m")
    extra = [f"hydra.sweep.dir={hydra_quote(str(sweep_dir))}"] if sweep_dir else []
    return shlex.join(["python", "train.py", *args, *extra, "ckpt_path=${paths.output_dir}/checkpoints/last.ckpt"])
