"""How much a loss measured on a small test set moves with which items happen to be in it.

    python scripts/test_set_spread.py <run dir>/checkpoints/last.ckpt             # subsets of 1,000 items
    python scripts/test_set_spread.py CKPT --subset 500 --draws 4000

Scores every test item of the checkpoint's own split (the data settings saved in the checkpoint), then draws
random subsets of `--subset` items and prints the spread (standard deviation) of their per-character loss.
makemore.py reports its transformer's "~1.92" on 1,000 test names; this says how far apart two such numbers can
be from the test set alone.
"""

import argparse
import math

import torch

from makemore_lab.checkpoint import checkpoint_datamodule, load_trained_net
from makemore_lab.errors import exit_on_user_error


def per_character_losses(net, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """makemore_lab.losses.split_loss, kept per character: that one sums in batches, and every reported loss
    comes from it, so it stays as it is."""
    with torch.no_grad():
        return torch.cat([
            torch.nn.functional.cross_entropy(net(xb), yb, reduction="none")
            for xb, yb in zip(x.split(batch_size), y.split(batch_size))
        ])


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt_path")
    parser.add_argument("--subset", type=int, default=1000, help="items per drawn test set (makemore.py: 1,000)")
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    net, vocab, meta = load_trained_net(args.ckpt_path)
    datamodule = checkpoint_datamodule(meta, vocab)
    test_items, test = datamodule.test_items, datamodule.splits["test"]
    # The test split lays out each item's characters (and its end mark) one after another, in item order.
    losses = per_character_losses(net, test.x, test.y)
    lengths = torch.tensor([len(item) + 1 for item in test_items])
    item_sums = torch.stack([chunk.sum() for chunk in losses.split(lengths.tolist())])

    generator = torch.Generator().manual_seed(args.seed)
    draws = torch.randint(0, len(test_items), (args.draws, args.subset), generator=generator)
    subset_losses = item_sums[draws].sum(1) / lengths[draws].sum(1)
    print(f"test split: {len(test_items)} items, {len(losses)} characters, loss {losses.mean():.4f}")
    print(f"{args.subset}-item test sets ({args.draws} draws): loss std {subset_losses.std():.4f}, "
          f"5-95% range {subset_losses.quantile(0.05):.4f} .. {subset_losses.quantile(0.95):.4f}")
    print(f"whole test split: standard error about {subset_losses.std() * math.sqrt(args.subset / len(test_items)):.4f}")


if __name__ == "__main__":
    main()
