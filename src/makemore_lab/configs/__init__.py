"""The packaged Hydra configs (train/sample/eval.yaml and one folder per config group), shipped inside the wheel.

The entry points compose them as `pkg://makemore_lab.configs`; a user's own `--config-dir` extends or overrides them.
"""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
