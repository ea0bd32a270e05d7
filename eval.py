"""Loss of a checkpoint on its val and test splits: `python eval.py ckpt_path=...`."""

import hydra
from omegaconf import DictConfig

from makemore_lab.evaluate import run


@hydra.main(version_base="1.3", config_path="pkg://makemore_lab.configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
