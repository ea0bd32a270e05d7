"""`train_population`, the engine's entry point (re-exported by the package, with grouping.py's `population_refusal`)."""

import json
import logging
import traceback
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from makemore_lab.console import quiet_third_party_messages
from makemore_lab.errors import TrainingInterrupted, UserError
from makemore_lab.population import grouping, memory, processes
from makemore_lab.population.grouping import population_refusal
from makemore_lab.population.member import Member
from makemore_lab.population.run import Population, StopFlag

log = logging.getLogger(__name__)


def train_population(cfgs: list[DictConfig], stop: StopFlag | None = None) -> list[dict | BaseException]:
    """Train the members (full train configs, each with its own paths.output_dir) as populations in this process.

    Returns per member, in order, its summary dict (train(cfg)'s, plus population_size) or the exception that ended
    it alone. Members that cannot share one population (different shapes, data, step counts, memory) are split
    into several, trained one after another. TrainingInterrupted is raised after every member is saved: on Ctrl-C
    or SIGTERM, or, given `stop` (population/processes.py: populations side by side in several processes), when
    the process that holds the signal handlers sets it; then this process installs none of its own.
    """
    quiet_third_party_messages()  # as train() does for a run
    members = [Member(cfg, Path(cfg.paths.output_dir)) for cfg in cfgs]
    device = choose_device(cfgs[0])
    shared_data: dict = {}  # one encoded corpus per data config: members read it, none copies it
    for member in members:
        set_up(member, device, shared_data)
    for group in populations(members, device):
        log.info("population of %d: %s", len(group), ", ".join(str(m.out_dir) for m in group))
        try:
            Population(group, device, stop).train()
        except TrainingInterrupted as err:
            for member in members:
                if member.active:
                    member.release(err)
            raise
        except Exception as err:  # a crash ends this population's members, not the sweep (as sweep_policy does)
            log.debug("population crashed:\n%s", traceback.format_exc())
            for member in group:
                if member.active:
                    member.fail(err)
    return [m.result for m in members]


def set_up(member: Member, device: torch.device, shared_data: dict) -> None:
    member.out_dir.mkdir(parents=True, exist_ok=True)
    with member.logging_to_train_log():
        try:
            refusal = population_refusal(member.cfg)
            if refusal:
                raise UserError(f"cannot train in a population: {refusal}")
            member.set_up(device, shared_data)
            done = member.finished_summary()
            if done is not None:
                member.result = done
                member.release()
        except Exception as err:  # UserError or a crash: this member's result, the others go on
            log.debug("member set-up failed:\n%s", traceback.format_exc())
            member.fail(err)


def choose_device(cfg: DictConfig) -> torch.device:
    """The solo run's accelerator choice: a GPU where there is one and the config allows it, else the CPU (the rule is
    processes.trains_on_cpu's, which the launcher also asks, before torch is loaded)."""
    return torch.device("cpu" if processes.trains_on_cpu(cfg.trainer.get("accelerator", "auto")) else "cuda")


def population_key(member: Member) -> str:
    """Members with the same key can be stacked: same architecture and shapes, same data and steps. The model and
    data keys that may differ are the launcher's (grouping.may_differ): one rule for both."""
    cfg = member.cfg
    same = lambda section: {
        k: v
        for k, v in OmegaConf.to_container(cfg[section], resolve=True).items()
        if not grouping.may_differ(f"{section}.{k}", v)
    }
    model, data = same("model"), same("data")
    trainer = {
        k: cfg.trainer.get(k)
        for k in ("max_steps", "val_check_interval", "log_every_n_steps", "gradient_clip_algorithm")
    }
    shapes = [(name, tuple(t.shape)) for name, t in member.net.state_dict().items()]
    return json.dumps([model, data, trainer, cfg.block_size, member.start_step, shapes], sort_keys=True, default=str)


def populations(members: list[Member], device: torch.device) -> list[list[Member]]:
    """The active members grouped by population_key, each group cut to the memory budget; a member too big for the
    budget alone ends with one line before training."""
    groups: dict[str, list[Member]] = {}
    for member in members:
        if member.active:
            groups.setdefault(population_key(member), []).append(member)
    result = []
    for group in groups.values():
        first = group[0]
        x, y = first.datamodule.train_examples[torch.arange(first.cfg.data.batch_size)]
        need = memory.member_bytes(
            first.cfg, first.net, first.datamodule, x.to(device), y.to(device), first.datamodule.train_on == "items"
        )
        budget = memory.budget_bytes(first.cfg, device)
        if need > budget:
            for member in group:
                with member.logging_to_train_log():
                    member.fail(
                        UserError(
                            f"{member.cfg.model_name}: one member needs about {need / memory.GB:.3g} GB (weights, "
                            f"gradients, optimizer state, activations), more than the population memory budget "
                            f"{budget / memory.GB:.3g} GB (population_max_memory_gb)"
                        )
                    )
            continue
        result += memory.cut(group, need, budget)
    return result
