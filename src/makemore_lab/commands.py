"""What the user typed, and the command lines printed back to them (resume this run, continue this sweep, sample
or evaluate that checkpoint), in the form they typed: `makemore-train ...`, `python train.py ...`, or the Python
call `makemore_lab.train(...)`. Nothing here imports torch or Lightning: a refused run dir names its resume command
before anything heavy is imported, and the population launcher builds its command in a process that never loads
either.

What the user typed is recorded once, by the entry point (`record`, from cli.py), and put in the environment
(MAKEMORE_LAB_TYPED) so that the processes a run starts (a population's workers, a joblib launcher's) print the
same command. The Python API (api.py) runs the console entry point in a child process and tells it, through
MAKEMORE_LAB_API_CALL, that the user typed `makemore_lab.train(...)` or `makemore_lab.sweep(...)`.

Paths are quoted twice over: for Hydra's override grammar (spaces, parentheses, '=' ...) inside, and for the shell
(or Python's string literals, for an API call) outside, so a printed line runs as printed.

`ckpt_path=latest` (`latest_checkpoint`): the newest run's `checkpoints/last.ckpt` under the logs dir, for
sample, eval and a train resume (docs/package.md).
"""

import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

from makemore_lab.errors import UserError

TYPED_ENV = "MAKEMORE_LAB_TYPED"
API_ENV = "MAKEMORE_LAB_API_CALL"
ENTRIES = {
    "train": ("makemore-train", "train.py"),
    "sample": ("makemore-sample", "sample.py"),
    "eval": ("makemore-eval", "eval.py"),
}
# Hydra's command-line flags that take a value (the rest of the command line is overrides and switches).
VALUE_FLAGS = (
    "--config-dir",
    "-cd",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--experimental-rerun",
)
MULTIRUN_FLAGS = ("-m", "--multirun")


def hydra_quote(value: str) -> str:
    """A value for Hydra's override grammar: as is when plain, else double-quoted with backslashes and quotes escaped."""
    if re.fullmatch(r"[\w./:+-]+", value, flags=re.ASCII):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ------------------------------------------------------------------------------------------ what was typed


def split_command_line(args: list[str]) -> tuple[list[str], list[str]]:
    """Hydra's command line as (flags, overrides): `--config-dir d -m a=1` -> (['--config-dir', 'd', '-m'], ['a=1'])
    (anything else, e.g. a script's own arguments where a script called train(cfg), is no part of a command)."""
    flags, overrides, args = [], [], list(args)
    while args:
        arg = args.pop(0)
        if arg in VALUE_FLAGS and args:
            flags += [arg, args.pop(0)]
        elif arg.startswith("-"):
            flags.append(arg)
        elif "=" in arg or arg.startswith("~"):  # key=value, +key=value, ~key: what Hydra takes as an override
            overrides.append(arg)
    return flags, overrides


def config_dir_flag(flags: list[str]) -> str | None:
    """The --config-dir of Hydra's flags, if one was given."""
    for i, flag in enumerate(flags):
        if flag in ("--config-dir", "-cd") and i + 1 < len(flags):
            return flags[i + 1]
        if flag.startswith("--config-dir="):
            return flag.split("=", 1)[1]
    return None


def shown_path(path: str) -> str:
    """A path as the user can type it where they are: relative when it lies under the working directory."""
    if os.path.isabs(path):
        try:
            relative = os.path.relpath(path)
        except ValueError:  # another drive (Windows)
            return path
        if not relative.startswith(os.pardir):
            return relative
    return path


def program(entry: str, argv0: str) -> list[str]:
    """How the user started `entry` (train, sample, eval): the console script by the name they typed when it is
    the one on their PATH (else by its path), or `python <the script as typed>`; `python <entry>.py` when neither."""
    console, script = ENTRIES[entry]
    name = Path(argv0).name
    if name.removesuffix(".exe").removesuffix("-script.py") == console:
        found = shutil.which(console)
        same = found is not None and os.path.exists(argv0) and os.path.samefile(found, argv0)
        return [console] if same else [shown_path(argv0)]
    if name.endswith(".py"):
        return ["python", shown_path(argv0)]
    return ["python", script]


def record(entry: str) -> dict:
    """Record what the user typed to start this process's `entry` (cli.py calls this first): the API call the parent
    process made (MAKEMORE_LAB_API_CALL, read and removed), or this command line; kept in MAKEMORE_LAB_TYPED for
    the processes this one starts."""
    api_call = os.environ.pop(API_ENV, None)
    flags, overrides = split_command_line(sys.argv[1:])
    if api_call is not None:
        call = json.loads(api_call)
        typed = {"api": call["function"], "args": call["args"], "config_dir": call.get("config_dir")}
    else:
        typed = {
            "program": program(entry, sys.argv[0]),
            "args": overrides,
            "config_dir": config_dir_flag(flags),
            "multirun": any(f in MULTIRUN_FLAGS for f in flags),
        }
    typed["entry"] = entry
    os.environ[TYPED_ENV] = json.dumps(typed)
    return typed


def typed() -> dict:
    """What the user typed (record's), or, where no entry point recorded it (a script calling train(cfg)),
    `python train.py` with this process's command line."""
    if TYPED_ENV in os.environ:
        return json.loads(os.environ[TYPED_ENV])
    flags, overrides = split_command_line(sys.argv[1:])
    return {
        "program": ["python", "train.py"],
        "args": overrides,
        "config_dir": config_dir_flag(flags),
        "multirun": any(f in MULTIRUN_FLAGS for f in flags),
        "entry": "train",
    }


def command(entry: str, args: list[str], multirun: bool = False, api: bool = True) -> str:
    """The command line that runs `entry` with these overrides, in the form the user typed this one: the API call
    (train and sweeps, when the user called the API and `api`), else the console script or the clone's script
    (next to the one they ran), with their --config-dir."""
    was = typed()
    config_dir = was.get("config_dir")
    if "api" in was and api and entry == "train":
        call = "makemore_lab.sweep" if multirun else "makemore_lab.train"
        extra = [f"config_dir={config_dir!r}"] if config_dir else []
        return f"{call}({', '.join([*map(repr, args), *extra])})"
    prefix = was.get("program") or [ENTRIES["train"][0]]  # an API user's other commands: the console scripts
    if entry != was.get("entry", "train"):
        prefix = sibling(prefix, entry)
    flags = (["--config-dir", config_dir] if config_dir and entry == "train" else []) + (["-m"] if multirun else [])
    return shlex.join([*prefix, *flags, *args])


def sibling(prefix: list[str], entry: str) -> list[str]:
    """The program of another entry point, next to the one typed: makemore-train -> makemore-sample, python
    train.py -> python sample.py (in the same directory)."""
    console, script = ENTRIES[entry]
    last = prefix[-1]
    head = os.path.dirname(last)
    if last.endswith(".py"):
        return [*prefix[:-1], os.path.join(head, script) if head else script]
    return [os.path.join(head, console) if head else console]


def typed_command(entry: str, args: list[str]) -> str:
    """For an error message or a hint: `entry` with these arguments, as the user runs this package's commands
    (`makemore-sample ckpt_path=...` after makemore-train, `python sample.py ...` after python train.py)."""
    return command(entry, args, api=False)


def losses_command(ckpt: Path, data_path: str | None = None) -> str:
    """The command that prints a checkpoint's losses (makemore-eval / python eval.py), as the user runs commands;
    with the run's own data file where it had one (eval reads the data the user names, never a checkpoint's)."""
    data = [f"data.path={hydra_quote(str(data_path))}"] if data_path else []
    return typed_command("eval", [f"ckpt_path={hydra_quote(str(ckpt))}", *data])


# ------------------------------------------------------------------------------------------------- resuming


def run_overrides(task_overrides=None) -> list[str]:
    """What the user typed for this run (Hydra's task overrides), without where it runs and what it resumes from:
    the same for a run and its resumption, so a checkpoint and summary.json record it to tell runs apart."""
    if task_overrides is None:
        task_overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    return [str(o) for o in task_overrides if not str(o).startswith(("ckpt_path=", "hydra.run.dir="))]


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def resume_command(out_dir: Path, task_overrides=None) -> str:
    """The command that continues this run: its own overrides, its run dir, its last checkpoint. A job of a sweep
    (this process's HydraConfig is a multirun's, and no other overrides are given) is continued by its sweep's
    command (sweep_resume_command)."""
    if task_overrides is None and in_multirun():
        return sweep_resume_command([out_dir])
    last = Path(out_dir) / "checkpoints" / "last.ckpt"
    return command(
        "train",
        [
            *run_overrides(task_overrides),
            f"hydra.run.dir={hydra_quote(str(out_dir))}",
            f"ckpt_path={hydra_quote(str(last))}",
        ],
    )


_multirun_dir: Path | None = None  # this process's multirun's sweep dir, from its start (multirun_started)


def multirun_started(sweep_dir) -> None:
    """Called when a multirun starts (run_dir.OutputDirCheck.on_multirun_start), with its sweep dir."""
    global _multirun_dir
    _multirun_dir = Path(str(sweep_dir)).absolute()


def multirun_dir() -> Path | None:
    """This process's multirun's sweep dir: HydraConfig's while a job runs; between jobs and after the last one,
    where Hydra has set none (its run_job restores what was there before), the one the multirun started with."""
    if in_multirun():
        return Path(str(HydraConfig.get().sweep.dir)).absolute()
    return _multirun_dir


def sweep_dir_of(out_dirs) -> Path | None:
    """The sweep dir that holds these job dirs, else this process's multirun's, else None."""
    parents = {Path(d).parent for d in out_dirs}
    if len(parents) == 1:
        return parents.pop()
    return multirun_dir()


def sweep_resume_command(out_dirs=()) -> str:
    """The sweep's command again, as typed, into its own sweep dir: run again there, the same sweep keeps each
    finished or failed job, resumes each interrupted one from its last.ckpt, and runs the rest
    (sweep_policy.earlier_result), whichever launcher runs them. No ckpt_path: a job that never started has
    none, and each job's own resume is the sweep's to choose."""
    sweep_dir = sweep_dir_of(out_dirs)
    args = [a for a in typed()["args"] if not a.startswith("hydra.sweep.dir=")]
    if sweep_dir is not None:
        args.append(f"hydra.sweep.dir={hydra_quote(str(sweep_dir))}")
    return command("train", args, multirun=True)


# ------------------------------------------------------------------------------------------ ckpt_path=latest


def latest_checkpoint(log_dir: Path) -> Path:
    """The newest run's last checkpoint under `log_dir`: of every `<run dir>/checkpoints/last.ckpt` there (runs,
    sweeps' jobs, populations' members), the one written last."""
    found = []
    for path in Path(log_dir).glob("**/checkpoints/last.ckpt"):
        try:
            found.append((path.stat().st_mtime_ns, str(path), path))
        except OSError:  # removed while we looked
            continue
    if not found:
        raise UserError(
            f"ckpt_path=latest: no run under {shown_path(str(log_dir))}/ has a checkpoint "
            "(<run dir>/checkpoints/last.ckpt); train one first, or give ckpt_path=<a checkpoint>"
        )
    return max(found)[2]


def announce_latest(ckpt: Path) -> None:
    print(
        f"ckpt_path=latest: the newest run is {shown_path(str(ckpt.parent.parent.absolute()))} "
        f"(its checkpoints/last.ckpt)",
        file=sys.stderr,
        flush=True,
    )


def resolve_ckpt_path(cfg, entry: str) -> str:
    """The checkpoint sample or eval reads (cfg.ckpt_path, set to it): the path given, or for `latest` the newest
    run's last.ckpt under paths.log_dir (one line on stderr says which run). None or missing: one line with the
    command to type."""
    value = None if OmegaConf.is_missing(cfg, "ckpt_path") else cfg.get("ckpt_path")
    if value is None:
        example = f"{typed_command(entry, [])} ckpt_path=<run dir>/checkpoints/last.ckpt"
        raise UserError(f"ckpt_path is required: {example} (or ckpt_path=latest: the newest run under logs/)")
    if value == "latest":
        ckpt = latest_checkpoint(Path(str(OmegaConf.select(cfg, "paths.log_dir", default="logs"))))
        announce_latest(ckpt)
        with open_dict(cfg):
            cfg.ckpt_path = str(ckpt)
    return cfg.ckpt_path
