"""Which process of a distributed run this is: the one place that reads the launchers' rank variables.

An extra DDP rank runs the whole command again in its rank 0's run dir: Lightning's DDP launcher re-runs it with
LOCAL_RANK (and NODE_RANK) set, torchrun sets RANK and LOCAL_RANK, and SLURM starts one task per rank (a SLURM
job with several tasks, e.g. hydra/launcher=slurm_cpu trainer=ddp) with SLURM_PROCID and SLURM_LOCALID. Only global
rank 0 claims the run dir (run_dir.py) and writes the sweep's table (sweep_summary.py); Lightning itself learns
the ranks from the same variables (its SLURMEnvironment / TorchElasticEnvironment).
"""

import os

# torchrun, Lightning's DDP launcher, SLURM (a task's rank in the job, and on its node)
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "SLURM_LOCALID")


def is_rank_zero() -> bool:
    """True in the process that owns the run: every rank variable that is set says 0."""
    return all(os.environ.get(name, "0").strip() in ("", "0") for name in RANK_VARIABLES)
