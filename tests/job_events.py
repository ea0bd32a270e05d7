"""A test-only Hydra callback: one JSON line per on_job_start / on_job_end, to check that a launcher fires both for
every job, with the job's own config and result."""

import json
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class JobEvents(Callback):
    def __init__(self, path: str):
        self.path = Path(path)

    def record(self, event: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(event) + "\n")

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.record(
            {
                "event": "start",
                "num": config.hydra.job.num,
                "current": HydraConfig.get().job.num,
                "output_dir": config.hydra.runtime.output_dir,
            }
        )

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        self.record(
            {
                "event": "end",
                "num": config.hydra.job.num,
                "current": HydraConfig.get().job.num,
                "overrides": list(job_return.overrides),
                "return_value": job_return.return_value,
            }
        )


class CtrlCAfterFirstJob(Callback):
    """Ctrl-C (a real SIGINT to this process) right after the first job of a sweep has ended: between two jobs."""

    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.job.num == 0:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGINT)
