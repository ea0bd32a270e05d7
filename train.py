"""Train a character-level language model: `python train.py model=wavenet` (see configs/train.yaml)."""

import hydra
from omegaconf import DictConfig

from makemore_lab.train import run


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    return run(cfg)


if __name__ == "__main__":
    main()
