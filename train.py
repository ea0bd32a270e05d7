"""Train a character-level language model: `python train.py model=wavenet` (see src/makemore_lab/configs/train.yaml).

The same app as the installed `makemore-train` (src/makemore_lab/cli.py).
"""

from makemore_lab.cli import train

if __name__ == "__main__":
    train()
