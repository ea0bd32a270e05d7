"""Loss of a checkpoint on its val and test splits: `python eval.py ckpt_path=...`."""

from makemore_lab.hydra_app import entry_point
from makemore_lab.evaluate import run

main = entry_point("eval", run)  # Hydra's own errors in one line too (src/makemore_lab/hydra_app.py)

if __name__ == "__main__":
    main()
