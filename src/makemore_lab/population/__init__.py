"""Populations: the jobs of a sweep that differ only in shape-preserving values train as one vectorised run.

The engine's two entry points (the population launcher calls them; docs/population.md has the long form):
`train_population(cfgs)` trains full train configs as one population, each member in its own job dir, exactly
as `train(cfg)` would train it alone; `population_refusal(cfg)` says in one line why a config cannot join one.

The package imports nothing heavy itself: its names come from their modules on first use, so that the
launcher can import population/processes.py (and start its workers) without loading torch.
"""

import importlib

# name: the module it comes from (population_refusal's is torch-free: the launcher asks it before torch is loaded)
EXPORTS = {
    "train_population": "train",
    "population_key": "train",
    "populations": "train",
    "choose_device": "train",
    "set_up": "train",
    "population_refusal": "grouping",
}


def __getattr__(name: str):
    if name in EXPORTS:
        return getattr(importlib.import_module(f"makemore_lab.population.{EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
