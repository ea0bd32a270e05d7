"""CharDataModule: the data (corpus.py's CharData) as a LightningDataModule, with the loaders training reads."""

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from makemore_lab.data.batches import MinibatchStream
from makemore_lab.data.corpus import CharData


class CharDataModule(CharData, pl.LightningDataModule):
    """CharData (its arguments and everything it holds) as the LightningDataModule that Hydra builds from
    configs/data/ and the Trainer reads its loaders from."""

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        # Read when iteration starts: Lightning has restored global_step from a checkpoint by then, so a resumed
        # run draws the minibatches the interrupted run would have drawn next.
        first = (lambda: self.trainer.global_step) if self.trainer is not None else 0
        sampler = MinibatchStream(self.num_train_examples, self.batch_size, self.steps_per_call, rank, self.seed, first)
        # batch_size=None turns off per-item collation: the sampler hands the dataset a whole call of indices.
        return DataLoader(self.train_examples, sampler=sampler, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.eval_batches("val"), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.eval_batches("test"), batch_size=None)
