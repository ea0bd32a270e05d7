"""Generate items from a checkpoint: `python sample.py ckpt_path=... num_samples=20 temperature=0.8`.

The same app as the installed `makemore-sample` (src/makemore_lab/cli.py).
"""

from makemore_lab.cli import sample

if __name__ == "__main__":
    sample()
