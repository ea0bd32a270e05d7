"""The console scripts `makemore-train`, `makemore-sample`, `makemore-eval` (pyproject.toml [project.scripts]).

Each is a Hydra app over the packaged configs (`pkg://makemore_lab.configs`) taking the same overrides as the
clone's train.py, sample.py and eval.py, which call these same functions. Run from any directory: runs go to
`logs/` there (paths.root_dir is the working directory; hydra.job.chdir is false). `--config-dir <dir>` adds a
user's own config dir in front of the packaged one (docs/package.md).

Torch and Lightning are imported only once Hydra has composed the config (`lazy_task`), after the Ctrl-C handler
is installed: importing them takes seconds (~6 s here), so a bad override, an unknown option, or (for a single
train run) a value that breaks a documented rule is one line at once, and a Ctrl-C while importing is one line too.
"""

import importlib
import logging
import os
import signal
import sys


def exit_on_early_interrupt(signum, frame) -> None:
    """Ctrl-C outside training: while starting up, or in a sweep between two jobs (whose finished jobs are kept).

    It exits the process at once (os._exit) rather than raising SystemExit where the signal landed: at start-up
    that is usually inside an import, and measured here, a SystemExit raised inside numpy's import (under torch's)
    left numpy half-imported and surfaced as a RecursionError traceback, or was swallowed by a library's broad
    `except` and the run trained on (exit 0). Nothing is unsaved at these moments: no checkpoint exists yet, or the
    finished jobs' files are closed; the run dir's lock is an flock, released with the process."""
    ended = getattr(sys.modules.get("makemore_lab.sweep_policy"), "jobs_ended", 0)  # not imported: still starting
    if ended:
        print(f"error: interrupted between sweep jobs; the {ended} job(s) that ended keep their results "
              "(the same command continues the sweep)", file=sys.stderr)
    else:
        print("error: interrupted before training started; nothing was saved", file=sys.stderr)
    logging.shutdown()  # Hydra's log files, flushed
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def hydra_app(task, config_name: str):
    """hydra.main over the packaged configs, with Hydra's own errors in one line (hydra_app.entry_point)."""
    from makemore_lab.hydra_app import entry_point

    return entry_point(config_name, task)


def lazy_task(module: str, rules: str, needs_checkpoint: str | None = None):
    """The task `<module>.run`, imported when Hydra calls it with the composed config. In a single run the checks
    that need no torch come first, in the run's own order (a checkpoint script's ckpt_path, then config_schema's
    `rules`); in a multirun a bad job is a failed row of the sweep (sweep_policy), so jobs are checked where they
    run."""

    def task(cfg):
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.get().mode == RunMode.RUN:
            from makemore_lab import config_schema
            from makemore_lab.errors import exit_on_user_error

            @exit_on_user_error
            def check():
                if needs_checkpoint:
                    config_schema.required_ckpt_path(cfg, needs_checkpoint)
                config_schema.validate(cfg, getattr(config_schema, rules))

            check()
        return importlib.import_module(module).run(cfg)

    return task


def train() -> None:
    """makemore-train model=wavenet trainer.max_steps=50000 (the overrides of train.py)."""
    signal.signal(signal.SIGINT, exit_on_early_interrupt)  # training installs its own handler (resume.py)
    hydra_app(lazy_task("makemore_lab.train", "TRAIN_RULES"), "train")()


def sample() -> None:
    """makemore-sample ckpt_path=<run dir>/checkpoints/last.ckpt num_samples=20 (the overrides of sample.py)."""
    hydra_app(lazy_task("makemore_lab.sample", "SAMPLE_RULES", "sample.py"), "sample")()


def evaluate() -> None:
    """makemore-eval ckpt_path=<run dir>/checkpoints/last.ckpt (the overrides of eval.py)."""
    hydra_app(lazy_task("makemore_lab.evaluate", "EVAL_RULES", "eval.py"), "eval")()
