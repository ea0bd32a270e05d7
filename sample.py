"""Generate items from a checkpoint: `python sample.py ckpt_path=... num_samples=20 temperature=0.8`."""

from makemore_lab.hydra_app import entry_point
from makemore_lab.sample import run

main = entry_point("sample", run)  # Hydra's own errors in one line too (src/makemore_lab/hydra_app.py)

if __name__ == "__main__":
    main()
