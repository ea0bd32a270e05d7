"""The console scripts `makemore-train`, `makemore-sample`, `makemore-eval` (pyproject.toml [project.scripts]).

Each is a Hydra app over the packaged configs (`pkg://makemore_lab.configs`) taking the same overrides as the
clone's train.py, sample.py and eval.py, which call these same functions, and the one path every entry point takes:
the Python API (api.py) runs `train()` here too, in a child process. Run from any directory: runs go to `logs/`
there (paths.root_dir is the working directory; hydra.job.chdir is false). `--config-dir <dir>` adds a user's own
config dir in front of the packaged one (docs/package.md). Each records what the user typed first
(commands.record), so every command it prints back is in that form.

Torch and Lightning are imported only once Hydra has composed the config (`lazy_task`), after the Ctrl-C handler
is installed: importing them takes seconds (~6 s here), so a bad override, an unknown option, or (for a single
train run) a value that breaks a documented rule is one line at once, and a Ctrl-C while importing is one line too.
"""

import importlib
import logging
import os
import signal
import sys
from pathlib import Path

from makemore_lab import commands
from makemore_lab.errors import UserError, exit_on_user_error


def exit_on_early_interrupt(signum, frame) -> None:
    """Ctrl-C outside training: while starting up, or in a sweep between two jobs (whose finished jobs are kept).

    It exits the process at once (os._exit) rather than raising SystemExit where the signal landed: at start-up
    that is usually inside an import, and measured here, a SystemExit raised inside numpy's import (under torch's)
    left numpy half-imported and surfaced as a RecursionError traceback, or was swallowed by a library's broad
    `except` and the run trained on (exit 0). Nothing is unsaved at these moments: no checkpoint exists yet, or the
    finished jobs' files are closed; the run dir's lock is released with the process."""
    ended = ended_jobs()
    if ended:
        print(
            f"error: interrupted between sweep jobs; the {ended} job(s) that ended keep their results. Continue "
            f"the sweep with: {commands.sweep_resume_command()}",
            file=sys.stderr,
        )
    else:
        print("error: interrupted before training started; nothing was saved", file=sys.stderr)
    logging.shutdown()  # Hydra's log files, flushed
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def ended_jobs() -> int:
    """How many jobs of this process's multirun have ended, by their files (summary.json, failure.json): whichever
    launcher ran them (one by one, or as a population whose members end together); 0 in a single run or before
    the multirun has started. Torch-free, and quick: called from the Ctrl-C handler."""
    sweep_dir = commands.multirun_dir()
    if sweep_dir is None:
        return 0
    return len({path.parent for name in ("summary.json", "failure.json") for path in sweep_dir.glob(f"**/{name}")})


def hydra_app(task, config_name: str):
    """hydra.main over the packaged configs, with Hydra's own errors in one line (hydra_app.entry_point)."""
    from makemore_lab.hydra_app import entry_point

    return entry_point(config_name, task)


def lazy_task(module: str, rules: str, entry: str):
    """The task `<module>.run`, imported when Hydra calls it with the composed config. In a single run the checks
    that need no torch come first, in the run's own order (sample's and eval's ckpt_path, `latest` resolved, then
    config_schema's `rules`); in a multirun a bad job is a failed row of the sweep (sweep_policy), so jobs are
    checked where they run."""

    def task(cfg):
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.get().mode == RunMode.RUN:
            from makemore_lab import config_schema

            @exit_on_user_error
            def check():
                if entry != "train":
                    commands.resolve_ckpt_path(cfg, entry)
                config_schema.validate(cfg, getattr(config_schema, rules))

            check()
        return importlib.import_module(module).run(cfg)

    return task


@exit_on_user_error
def resume_latest() -> None:
    """`makemore-train ckpt_path=latest ...`: continue the newest run under paths.log_dir, in its own run dir (unless
    hydra.run.dir says where). Resolved on the command line, before Hydra picks and claims the run dir."""
    flags, overrides = commands.split_command_line(sys.argv[1:])
    if "ckpt_path=latest" not in overrides:
        return
    if any(flag in commands.MULTIRUN_FLAGS for flag in flags):
        raise UserError(
            "ckpt_path=latest continues one run, not a sweep: continue a sweep with its own command and "
            "hydra.sweep.dir=<its sweep dir>"
        )
    from makemore_lab.hydra_app import compose

    cfg = compose("train", [o for o in overrides if o != "ckpt_path=latest"], commands.config_dir_flag(flags))
    if cfg is None:  # a composition error: the app reports it, in one line
        return
    ckpt = commands.latest_checkpoint(Path(str(cfg.paths.log_dir))).absolute()
    commands.announce_latest(ckpt)
    check_same_overrides(ckpt.parent.parent, overrides)
    argv = [f"ckpt_path={commands.hydra_quote(str(ckpt))}" if a == "ckpt_path=latest" else a for a in sys.argv]
    if not any(o.startswith("hydra.run.dir=") for o in overrides):
        argv.append(f"hydra.run.dir={commands.hydra_quote(str(ckpt.parent.parent))}")
    sys.argv[:] = argv


def check_same_overrides(run_dir: Path, typed: list[str]) -> None:
    """A run continues with the overrides it was started with: each key its .hydra/overrides.yaml holds must be
    typed again (with any value: `trainer.max_steps=` may grow), else one line with the command that continues it
    (the file is only printed back, never applied)."""
    from omegaconf import OmegaConf

    recorded_file = run_dir / ".hydra" / "overrides.yaml"
    if not recorded_file.is_file():
        return
    recorded = commands.run_overrides(OmegaConf.to_container(OmegaConf.load(recorded_file)))
    missing = sorted({override_key(o) for o in recorded} - {override_key(o) for o in typed})
    if missing:
        raise UserError(
            f"the newest run ({commands.shown_path(str(run_dir))}) was started with {', '.join(missing)} "
            f"set, and this command does not set them: continue it with: "
            f"{commands.resume_command(run_dir, recorded)}"
        )


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def train() -> None:
    """makemore-train model=wavenet trainer.max_steps=50000 (the overrides of train.py)."""
    signal.signal(signal.SIGINT, exit_on_early_interrupt)  # training installs its own handler (resume.py)
    commands.record("train")
    resume_latest()
    hydra_app(lazy_task("makemore_lab.train", "TRAIN_RULES", "train"), "train")()
    # Done: every result is written. A Ctrl-C during the interpreter's exit (a second or two, once torch is loaded)
    # would otherwise end it by the signal's default action, exit 130 with nothing said; ignored, it changes nothing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def sample() -> None:
    """makemore-sample [ckpt_path=<run dir>/checkpoints/last.ckpt] num_samples=20 (the overrides of sample.py;
    without ckpt_path, the newest run's)."""
    commands.record("sample")
    hydra_app(lazy_task("makemore_lab.sample", "SAMPLE_RULES", "sample"), "sample")()


def evaluate() -> None:
    """makemore-eval ckpt_path=<run dir>/checkpoints/last.ckpt|latest (the overrides of eval.py)."""
    commands.record("eval")
    hydra_app(lazy_task("makemore_lab.evaluate", "EVAL_RULES", "eval"), "eval")()
