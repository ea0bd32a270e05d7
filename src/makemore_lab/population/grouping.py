"""Which jobs of a sweep can train together as one population: those whose configs differ only in values that leave
every tensor shape (and the one training loop they share) unchanged.

Two jobs share a group when their resolved train configs are equal everywhere except in these keys:

- `seed` (a member's initialisation) and `data.seed` (its minibatch order);
- numbers under `optimizer` (lr, momentum, betas, eps, weight_decay, dampening, ...) and under `schedule` (at,
  factor, warmup_steps, min_factor, ...): every member keeps its own optimizer hyperparameters and lr schedule.
  Not `optimizer._target_` or `schedule._target_` (another algorithm, other optimizer state), nor a flag such as
  `amsgrad` or `nesterov` (a boolean is not a hyperparameter value but a variant of the algorithm);
- `model.init` (kaiming / naive / torch), `model.gain`, and every `model.*dropout` number (the folded forward
  drops each member's rows at its own rate: population/folded.py);
- `optuna_trial.*` (the Optuna sweeper's trial of each job of a search with a pruner: each member reports to its
  own, and a pruned member stops alone: callbacks/pruning.py);
- `paths.*` and anything that holds the job's own dir (`paths.output_dir`): a checkpoint dir, the TensorBoard dir,
  `ckpt_path=${paths.output_dir}/checkpoints/last.ckpt` (resuming each member from its own checkpoint).
  Hydra's own keys (`hydra.*`) are not in a train config at all.

Everything else must be equal, notably: the model and its widths, `block_size`, `data.*` (path, batch size, split
and its seed, train_on), `trainer.*` (max_steps, val_check_interval, clipping, precision, max_time), the callbacks and
loggers, `steps_per_call`, `threads`, `final_weights`, `num_samples`, `max_params`. A key present in one job only
(`+optimizer.nesterov=true`) is a difference too. Each of these decisions is argued in docs/population_launcher.md.

A job whose config breaks a documented rule (config_schema), or that cannot train in a population at all
(`population_refusal` below, or the launcher's own reasons), is a group of one: it runs alone, exactly as under the basic
launcher, and fails there with its usual one line.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from makemore_lab import config_schema
from makemore_lab.errors import UserError

JOB_DIR = "<job dir>"  # what a job's own output dir reads as when configs are compared
SHOWN_DIFFERENCES = 3  # keys named in one reason line; the rest are counted


def population_refusal(cfg: DictConfig) -> str | None:
    """None if `cfg` can be a member of a population of more than one; otherwise one line why not."""
    trainer = cfg.trainer
    if "ddp" in str(trainer.get("strategy") or "") or trainer.get("devices", 1) not in (1, "1", "auto"):
        return f"trainer.strategy={trainer.get('strategy')}, devices={trainer.get('devices')}: a DDP run is one process per device"
    for name, node in (cfg.get("callbacks") or {}).items():
        target = (node or {}).get("_target_", "") if node else ""
        # Each member's best checkpoint and early stopping are its own (run.Population): on its val/loss, lowest best
        if target.endswith("EarlyStopping") and (
            node.get("monitor") != "val/loss"
            or node.get("mode", "min") != "min"
            or node.get("stopping_threshold") is not None
            or node.get("divergence_threshold") is not None
        ):
            return f"callbacks.{name}: a population member stops early on val/loss (mode min, patience, min_delta) only"
        if target.endswith("ModelCheckpoint") and node.get("monitor") not in (None, "val/loss"):
            return f"callbacks.{name}: a population member keeps its best checkpoint by val/loss only"
    return None


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_numbers(value) -> bool:
    return is_number(value) or (isinstance(value, list) and bool(value) and all(map(is_number, value)))


def may_differ(key: str, value) -> bool:
    """True when members of one population may hold different values of `key` (this one being `value`)."""
    if key in ("seed", "data.seed", "model.init") or key.startswith(("paths.", "optuna_trial.")):
        return True  # optuna_trial: each job's own Optuna trial, which each member reports to
    section, _, name = key.partition(".")
    if section in ("optimizer", "schedule") and "." not in name and not name.startswith("_"):
        return is_numbers(value)
    if section == "model" and (name == "gain" or name.endswith("dropout")):
        return is_number(value)
    return False


def flatten(node, prefix: str = "") -> dict:
    """{"optimizer.lr": 0.1, "data.path": ..., ...}: every leaf of a plain container by its dotted key (lists are
    leaves: `optimizer.betas` is one value)."""
    if isinstance(node, dict) and node:
        leaves = {}
        for key, value in node.items():
            leaves.update(flatten(value, f"{prefix}{key}."))
        return leaves
    return {prefix[:-1]: node}


def comparable_view(cfg: DictConfig) -> dict:
    """The job's resolved config as flat leaves, with its own output dir written as JOB_DIR wherever it appears."""
    leaves = flatten(OmegaConf.to_container(cfg, resolve=True))
    job_dir = leaves.get("paths.output_dir")
    if isinstance(job_dir, str) and job_dir:
        leaves = {k: v.replace(job_dir, JOB_DIR) if isinstance(v, str) else v for k, v in leaves.items()}
    return leaves


def kind(key: str, value):
    """What must be equal between members for this leaf: the value itself, or only its kind when it may differ
    (a list's length stays: betas are a pair in every member)."""
    if not may_differ(key, value):
        return value
    return f"<{len(value)} numbers>" if isinstance(value, list) else "<free>"


def signature(leaves: dict) -> str:
    """Equal for two jobs exactly when they may share a population."""
    return json.dumps({key: kind(key, value) for key, value in leaves.items()}, sort_keys=True, default=str)


def differences(leaves: dict, other: dict) -> list[str]:
    """'model.n_hidden (300, not 200)' for each key that keeps `leaves` out of a group holding `other`."""
    out = []
    keys = [*leaves, *(key for key in other if key not in leaves)]  # in config order; the model's name first
    for key in sorted(keys, key=lambda key: key != "model_name"):
        if key not in other:
            out.append(f"{key} (only in this job)")
        elif key not in leaves:
            out.append(f"{key} (absent here)")
        elif kind(key, leaves[key]) != kind(key, other[key]):
            out.append(f"{key} ({leaves[key]!r}, not {other[key]!r})")
    return out


def difference_line(leaves: dict, other: dict) -> str:
    diff = differences(leaves, other)
    more = f" and {len(diff) - SHOWN_DIFFERENCES} more" if len(diff) > SHOWN_DIFFERENCES else ""
    return ", ".join(diff[:SHOWN_DIFFERENCES]) + more


@dataclass
class Grouping:
    """Groups of job indices (each in job order; groups in order of their first job), and one line for every job
    that could not join a population: one that runs alone by refusal or a bad value, and one whose group is not
    the first population, against the closest other population."""

    names: Sequence  # how the log calls each job (Hydra's job numbers)
    groups: list[list[int]] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)

    def describe(self) -> list[str]:
        """The log lines: how the jobs were grouped, then why each job that could not join did not."""
        names = self.names
        sizes = sorted((len(g) for g in self.groups), reverse=True)
        lines = [f"{len(names)} jobs in {len(self.groups)} group(s), run one after another (sizes {sizes})"]
        for number, group in enumerate(self.groups):
            what = "alone" if len(group) == 1 else f"as one population of {len(group)}"
            lines.append(f"group {number}: job(s) {label(group, names)} {what}")
        return lines + [f"job {names[i]} {reason}" for i, reason in sorted(self.reasons.items())]


def label(indices: Sequence[int], names: Sequence) -> str:
    return ",".join(str(names[i]) for i in indices)


def group_jobs(
    cfgs: Sequence[DictConfig], refusals: Sequence[str | None] | None = None, names: Sequence | None = None
) -> Grouping:
    """Group resolved train configs (one per job, in job order; `names` label them in the reasons, by default
    their indices). `refusals[i]`, when not None, is the one line why job i cannot be a member of any
    population: it runs alone with that reason."""
    refusals = refusals or [None] * len(cfgs)
    names = list(names) if names is not None else list(range(len(cfgs)))
    grouping = Grouping(names)
    views = [comparable_view(cfg) for cfg in cfgs]
    populations: dict[str, list[int]] = {}
    for index, cfg in enumerate(cfgs):
        reason = refusals[index] or rule_broken(cfg)
        if reason:
            grouping.groups.append([index])
            grouping.reasons[index] = f"runs alone: {reason}"
            continue
        group = populations.setdefault(signature(views[index]), [])
        if not group:
            grouping.groups.append(group)
        group.append(index)
    joinable = list(populations.values())
    for group in joinable[1:]:
        for index in group:
            closest = min(
                (g for g in joinable if g is not group), key=lambda g: len(differences(views[index], views[g[0]]))
            )
            where = "runs alone" if len(group) == 1 else f"is in a population of {len(group)}"
            grouping.reasons[index] = (
                f"{where}: it cannot join job(s) {label(closest, names)}, differing in "
                f"{difference_line(views[index], views[closest[0]])}"
            )
    return grouping


def rule_broken(cfg: DictConfig) -> str | None:
    """A documented key with a bad value: the job runs alone and fails there with this same line."""
    try:
        config_schema.validate(cfg, config_schema.TRAIN_RULES)
    except UserError as err:
        return f"bad value: {err}"
    return None
