"""makemore-lab's Optuna sweeper for Hydra (`hydra/sweeper=optuna`), on optuna >= 4: see docs/optuna.md.

Lives in Hydra's `hydra_plugins` namespace package because Hydra finds sweepers only there.
"""
