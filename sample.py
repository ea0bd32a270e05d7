"""Generate items from a checkpoint: `python sample.py ckpt_path=... num_samples=20 temperature=0.8`."""

import hydra
from omegaconf import DictConfig

from makemore_lab.sample import run


@hydra.main(version_base="1.3", config_path="pkg://makemore_lab.configs", config_name="sample")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
