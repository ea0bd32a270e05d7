"""Train a character-level language model: `python train.py model=wavenet` (see configs/train.yaml)."""

import signal
import sys


def interrupted(signum, frame):  # Ctrl-C while starting up (imports, config, data): one line, not a traceback
    print("error: interrupted before training started; nothing was saved", file=sys.stderr)
    sys.exit(130)


signal.signal(signal.SIGINT, interrupted)  # training installs its own handler (src/makemore_lab/resume.py)

import hydra  # noqa: E402  (after the handler: importing torch takes seconds)
from omegaconf import DictConfig  # noqa: E402

from makemore_lab.train import run  # noqa: E402


@hydra.main(version_base="1.3", config_path="pkg://makemore_lab.configs", config_name="train")
def main(cfg: DictConfig) -> float:
    return run(cfg)


if __name__ == "__main__":
    main()
