"""How much a loss measured on a small test set moves with which items happen to be in it.

    python scripts/test_set_spread.py <run dir>/checkpoints/last.ckpt             # subsets of 1,000 items
    python scripts/test_set_spread.py CKPT --subset 500 --draws 4000
    python scripts/test_set_spread.py CKPT --data my_words.txt     # a checkpoint trained on your own file

Scores every test item of the checkpoint's own split (the data settings saved in the checkpoint, on the file it
was trained on: --data, or the packaged names.txt; checked against the checkpoint's fingerprint), then draws
random subsets of `--subset` items and prints the spread (standard deviation) of their per-character loss.
makemore.py reports its transformer's "~1.92" on 1,000 test names; this says how far apart two such numbers can
be from the test set alone.
"""

import argparse
import math

import torch

from makemore_lab.checkpoint import checkpoint_datamodule, load_trained_net
from makemore_lab.errors import exit_on_user_error
from makemore_lab.losses import item_losses


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt_path")
    parser.add_argument("--subset", type=int, default=1000, help="items per drawn test set (makemore.py: 1,000)")
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data", default=None, help="the data file it was trained on (default: the packaged names.txt)"
    )
    args = parser.parse_args()

    net, vocab, meta = load_trained_net(args.ckpt_path)
    datamodule = checkpoint_datamodule(meta, vocab, path=args.data, exact=True, splits=("test",))
    # Each test item's summed loss, from the same function as every reported loss (losses.split_loss).
    item_sums = item_losses(net, datamodule, "test")
    lengths = datamodule.splits["test"].lengths + 1  # its characters and its end mark
    count = len(item_sums)

    generator = torch.Generator().manual_seed(args.seed)
    draws = torch.randint(0, count, (args.draws, args.subset), generator=generator)
    subset_losses = item_sums[draws].sum(1) / lengths[draws].sum(1)
    print(
        f"test split: {count} items, {int(lengths.sum())} characters, loss {float(item_sums.sum() / lengths.sum()):.4f}"
    )
    print(
        f"{args.subset}-item test sets ({args.draws} draws): loss std {subset_losses.std():.4f}, "
        f"5-95% range {subset_losses.quantile(0.05):.4f} .. {subset_losses.quantile(0.95):.4f}"
    )
    print(f"whole test split: standard error about {subset_losses.std() * math.sqrt(args.subset / count):.4f}")


if __name__ == "__main__":
    main()
