"""makemore-lab's Hydra launcher `hydra/launcher=population` (population_launcher.py).

It lives in Hydra's `hydra_plugins` namespace package because Hydra instantiates launchers from there only; Hydra
imports this package at every start-up to scan for plugins, so nothing here imports torch or the engine until a
sweep is launched.
"""
