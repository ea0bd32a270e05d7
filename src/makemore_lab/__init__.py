"""makemore-lab: the makemore lectures' character-level language models as a configuration-driven lab.

From Python or a notebook (docs/package.md):

    import makemore_lab
    run = makemore_lab.train("model=mlp", "trainer.max_steps=5000")
    table = makemore_lab.sweep("optimizer.lr=0.03,0.1,0.3", "trainer.max_steps=1000")

The command line: makemore-train, makemore-sample, makemore-eval (src/makemore_lab/cli.py).
"""

import sys
import types

from makemore_lab.api import Run, SweepTable, sweep, train  # cheap: api imports torch and Hydra only when called

__all__ = ["Run", "SweepTable", "sweep", "train"]


class Package(types.ModuleType):
    """`makemore_lab.train` is the API function, although a submodule has that name too (makemore_lab/train.py:
    train(cfg), what the CLI runs). Importing a submodule sets it as an attribute of its package, which would
    replace the function with the module at the first training run; here that one assignment is skipped. The
    module stays `sys.modules["makemore_lab.train"]`, which `from makemore_lab.train import ...` reads."""

    def __setattr__(self, name: str, value) -> None:
        if name == "train" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = Package
