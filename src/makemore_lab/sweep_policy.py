"""What a failing job does to a sweep: in a multirun it becomes a failed row with its reason, and the sweep goes on.

A single run (`python train.py ...`) fails as usual: one line on stderr, a non-zero exit. In a multirun (`-m`,
with any launcher: basic, joblib, submitit) a job that fails — a bad value, a crash, a divergence, a model over
the parameter budget — writes `failure.json` (its one-line reason) in its job dir, logs the reason, and returns
+inf, so the launcher goes on to the next job, the Optuna sweeper tells the study the trial failed,
and the sweep summary lists the job as failed with the reason.
"""

import json
import logging
import math
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from makemore_lab.errors import TrainingInterrupted, UserError

log = logging.getLogger(__name__)

FAILURE_FILE = "failure.json"


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_job(train, cfg) -> float:
    """`train(cfg)`'s val loss; under a multirun a failure is recorded and returned as +inf instead of raised."""
    if not in_multirun():
        return train(cfg).get("val_loss", math.nan)
    try:
        return train(cfg).get("val_loss", math.nan)
    except TrainingInterrupted:
        raise  # Ctrl-C / SIGTERM stop the whole sweep
    except UserError as err:
        reason = str(err)
    except Exception as err:  # a crash is one job's result, not the sweep's end; its traceback goes to the job log
        log.debug("job crashed:\n%s", traceback.format_exc())
        reason = f"crashed: {type(err).__name__}: {err}".splitlines()[0]
    log.error("job %s failed: %s", HydraConfig.get().job.num, reason)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / FAILURE_FILE).write_text(json.dumps({"error": reason}) + "\n")
    return math.inf
