"""Character data: one item per line -> a vocabulary, the lectures' split, and (context, next) examples gathered
from one flat token tensor per split at batch time (see encoding.py for the layout, batches.py for the loaders).

- reading.py: the file -> items (input hygiene: encodings, non-regular files, size limit).
- encoding.py: Vocabulary, TokenSplit (a split's tokens; windows and whole items gathered from it).
- batches.py: the training minibatch stream (a pure function of seed, rank and step) and evaluation batches.
- corpus.py: CharData, the file encoded and split (what sample.py and eval.py build from a checkpoint).
- module.py: CharDataModule, CharData as the LightningDataModule that Hydra builds from configs/data/. Imported on
  first use (`makemore_lab.data.CharDataModule`), as it imports pytorch_lightning: the rest of the package's data
  code, and the entry points that need no training, start without Lightning's ~3 s import.
"""

from makemore_lab.data.batches import EvalBatches, MinibatchStream, TrainExamples, WholeItems, Windows
from makemore_lab.data.corpus import CharData, split_items
from makemore_lab.data.encoding import TokenSplit, Vocabulary, make_examples, make_item_examples
from makemore_lab.data.reading import BOUNDARY, builtin_names_path, read_data_file, read_items

__all__ = [
    "BOUNDARY",
    "CharData",
    "CharDataModule",
    "EvalBatches",
    "MinibatchStream",
    "TokenSplit",
    "TrainExamples",
    "Vocabulary",
    "WholeItems",
    "Windows",
    "builtin_names_path",
    "make_examples",
    "make_item_examples",
    "read_data_file",
    "read_items",
    "split_items",
]


def __getattr__(name: str):
    if name == "CharDataModule":  # module.py imports pytorch_lightning: only where a data module is wanted
        from makemore_lab.data.module import CharDataModule

        return CharDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
