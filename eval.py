"""Loss of a checkpoint on its val and test splits: `python eval.py ckpt_path=...`.

The same app as the installed `makemore-eval` (src/makemore_lab/cli.py).
"""

from makemore_lab.cli import evaluate

if __name__ == "__main__":
    evaluate()
