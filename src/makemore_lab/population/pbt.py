"""Population-based training inside a population (`pbt=default`, docs/population.md): exploit and explore.

Every `pbt.interval` steps, at that step's validation, the training members are ranked by their val loss; each
member of the bottom `quantile` copies the weights (and BatchNorm statistics) and optimizer state of a member of the
top `quantile` (exploit), then takes that member's hyperparameters of `pbt.keys`, each either resampled from the
search space (probability `resample_probability`) or multiplied by one of `perturb` and clipped to the space
(explore). Ray Tune's PBT defaults: quantile 0.25, perturbation x0.8 / x1.2, resample probability 0.25.

The search space of a key is what the sweep gave its members: the set of their values, and its range (a perturbed
value stays within the smallest and largest). Only optimizer numbers can be explored (`optimizer.lr`,
`optimizer.momentum`, `optimizer.weight_decay`, ...): each member's optimizer param group holds them, so a member
changes them between two steps without changing a shape; `optimizer.lr` is the base lr its schedule multiplies.

Each member records its lineage (at which step it copied whom, and the hyperparameters it follows from then on) in
its checkpoints, its summary.json (`pbt`) and its loggers (`pbt/<key>` scalars, a `pbt` text in TensorBoard); a
resumed population carries on its members' hyperparameters and lineage. The draws are a pure function of the first
member's seed and the step, so a resumed population draws what the uninterrupted one drew.
"""

import copy
import hashlib
import logging
import math
import random

import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger

from makemore_lab import tensorboard_events
from makemore_lab.errors import UserError

log = logging.getLogger(__name__)


def check(cfg: DictConfig, population: bool) -> None:
    """The `pbt` settings, in one line each; a job that trains alone cannot exploit anyone."""
    node = cfg.get("pbt")
    if node is None:
        return
    if not population:
        raise UserError(
            "pbt trains the members of one population (hydra/launcher=population with at least two jobs that differ "
            "only in shape-preserving values); this job trains alone"
        )
    interval, every = node.get("interval"), cfg.trainer.val_check_interval
    if not isinstance(interval, int) or isinstance(interval, bool) or interval <= 0 or interval % every:
        raise UserError(
            f"pbt.interval must be a positive multiple of trainer.val_check_interval ({every}): members are ranked "
            f"by their val loss, got {interval!r}"
        )
    quantile = node.get("quantile")
    if not isinstance(quantile, (int, float)) or not 0 < quantile <= 0.5:
        raise UserError(f"pbt.quantile must be a number in (0, 0.5], got {quantile!r}")
    perturb = node.get("perturb")
    if not perturb or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and f > 0 for f in perturb):
        raise UserError(f"pbt.perturb must be a list of positive factors, e.g. [0.8, 1.2], got {perturb!r}")
    probability = node.get("resample_probability")
    if not isinstance(probability, (int, float)) or not 0 <= probability <= 1:
        raise UserError(f"pbt.resample_probability must be a number in [0, 1], got {probability!r}")
    keys = node.get("keys") or []
    if not keys:
        raise UserError("pbt.keys must name at least one hyperparameter to explore, e.g. [optimizer.lr]")
    for key in keys:
        section, _, name = str(key).partition(".")
        value = OmegaConf.select(cfg, str(key), default=None)
        if section != "optimizer" or "." in name or name.startswith("_") or not is_number(value):
            raise UserError(
                f"pbt.keys: {key} cannot be explored: PBT changes optimizer numbers only (optimizer.lr, "
                "optimizer.momentum, ...), which a member changes between two steps; a model key changes shapes"
            )


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def group_key(key: str) -> str:
    """The optimizer param group's entry for `key`: the base lr for optimizer.lr (the schedule multiplies it)."""
    name = key.partition(".")[2]
    return "initial_lr" if name == "lr" else name


class PBT:
    """Exploit and explore for one population's members (population/run.py calls `due` and `round`)."""

    def __init__(self, population):
        self.population = population
        first = population.members[0].cfg
        self.settings = first.pbt
        self.keys = [str(k) for k in self.settings["keys"]]
        self.seed = first.seed
        # The space: every member's starting value of each key (its config's, before any exploit)
        self.space = {
            key: sorted({float(OmegaConf.select(m.cfg, key)) for m in population.members}) for key in self.keys
        }

    def due(self, step: int) -> bool:
        return step % self.settings.interval == 0 and step < self.population.max_steps

    def round(self, step: int, val_losses: dict[int, float], trainer) -> None:
        """Rank the training members by val loss (`val_losses`: member index -> its val loss at `step`); the bottom
        quantile exploits the top one and explores."""
        members = self.population.members
        ranked = sorted(val_losses, key=lambda i: (val_losses[i], i))
        if len(ranked) < 2:
            return
        count = max(1, min(len(ranked) // 2, math.ceil(len(ranked) * self.settings.quantile)))
        top, bottom = ranked[:count], ranked[-count:]
        rng = random.Random(int.from_bytes(hashlib.sha256(f"pbt {self.seed} {step}".encode()).digest()[:8], "little"))
        optimizer = trainer.optimizers[0]
        for loser in bottom:
            donor = rng.choice(top)
            self.copy_state(members[donor], members[loser])
            values = {key: self.explore(key, members[donor], rng) for key in self.keys}
            self.apply(members[loser], values)
            entry = {
                "step": step,
                "from": members[donor].out_dir.name,
                "val_loss": val_losses[loser],
                "from_val_loss": val_losses[donor],
                "hyperparameters": values,
            }
            members[loser].lineage.append(entry)
            self.log(members[loser], entry, step)
        module = self.population.module
        module.engine.set_lr(optimizer, step, base_changed=True)  # every member's lr from its (new) base lr

    def copy_state(self, donor, loser) -> None:
        """The donor's weights, BatchNorm statistics and optimizer state become the loser's (its rows of the stacked
        tensors, its own optimizer's state)."""
        net = self.population.module.net
        i, j = self.population.members.index(loser), self.population.members.index(donor)
        with torch.no_grad():
            for stacked in [*net.stacked_params.values(), *net.stacked_buffers.values()]:
                stacked[i].copy_(stacked[j])
        theirs = dict(zip(donor.net.parameters(), loser.net.parameters()))
        state = loser.optimizer.state
        state.clear()
        for param, value in donor.optimizer.state.items():
            state[theirs[param]] = copy.deepcopy(value)

    def explore(self, key: str, donor, rng: random.Random) -> float:
        space = self.space[key]
        if rng.random() < self.settings.resample_probability:
            return rng.choice(space)
        value = donor.optimizer.param_groups[0][group_key(key)] * rng.choice(list(self.settings.perturb))
        return min(max(value, space[0]), space[-1])

    def summary(self, member) -> dict:
        """summary.json's `pbt`: the member's lineage and the hyperparameters it ended with."""
        group = member.optimizer.param_groups[0]
        return {"lineage": member.lineage, "hyperparameters": {key: group[group_key(key)] for key in self.keys}}

    @staticmethod
    def apply(member, values: dict[str, float]) -> None:
        """The member's optimizer follows `values` from the next step (its lr: the new base lr x its schedule)."""
        for group in member.optimizer.param_groups:
            for key, value in values.items():
                group[group_key(key)] = value

    @staticmethod
    def log(member, entry: dict, step: int) -> None:
        text = (
            f"step {step}: copied {entry['from']} (val loss {entry['from_val_loss']:.4f}, this member's "
            f"{entry['val_loss']:.4f}); from now on "
            + ", ".join(f"{key}={value:.6g}" for key, value in entry["hyperparameters"].items())
        )
        for logger in member.loggers:
            logger.log_metrics({f"pbt/{k.partition('.')[2]}": v for k, v in entry["hyperparameters"].items()}, step)
            if isinstance(logger, TensorBoardLogger):
                tensorboard_events.write_text(logger.experiment, "pbt", text, step)
        with member.logging_to_train_log():
            log.info("pbt: %s", text)
