"""The console scripts `makemore-train`, `makemore-sample`, `makemore-eval` (pyproject.toml [project.scripts]).

Each is a Hydra app over the packaged configs (`pkg://makemore_lab.configs`) taking the same overrides as the
clone's train.py, sample.py and eval.py, which call these same functions. Run from any directory: runs go to
`logs/` there (paths.root_dir is the working directory; hydra.job.chdir is false). `--config-dir <dir>` adds a
user's own config dir in front of the packaged one (docs/package.md).

Torch and Lightning are imported inside the functions, after the Ctrl-C handler is installed: importing them
takes seconds, and a Ctrl-C then should be one line, not a traceback.
"""

import signal
import sys


def exit_on_early_interrupt(signum, frame) -> None:
    """Ctrl-C outside training: while starting up, or in a sweep between two jobs (whose finished jobs are kept)."""
    ended = getattr(sys.modules.get("makemore_lab.sweep_policy"), "jobs_ended", 0)  # not imported: still starting
    if ended:
        print(f"error: interrupted between sweep jobs; the {ended} job(s) that ended keep their results "
              "(the same command continues the sweep)", file=sys.stderr)
    else:
        print("error: interrupted before training started; nothing was saved", file=sys.stderr)
    sys.exit(130)


def hydra_app(task, config_name: str):
    """hydra.main over the packaged configs, with Hydra's own errors in one line (hydra_app.entry_point)."""
    from makemore_lab.hydra_app import entry_point

    return entry_point(config_name, task)


def train() -> None:
    """makemore-train model=wavenet trainer.max_steps=50000 (the overrides of train.py)."""
    signal.signal(signal.SIGINT, exit_on_early_interrupt)  # training installs its own handler (resume.py)
    from makemore_lab.train import run

    hydra_app(run, "train")()


def sample() -> None:
    """makemore-sample ckpt_path=<run dir>/checkpoints/last.ckpt num_samples=20 (the overrides of sample.py)."""
    from makemore_lab.sample import run

    hydra_app(run, "sample")()


def evaluate() -> None:
    """makemore-eval ckpt_path=<run dir>/checkpoints/last.ckpt (the overrides of eval.py)."""
    from makemore_lab.evaluate import run

    hydra_app(run, "eval")()
