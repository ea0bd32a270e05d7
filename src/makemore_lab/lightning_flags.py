"""What no single Trainer or callback key can say: combinations Lightning would accept and then train wrong.

The per-key rules are config_schema.TRAINER_FLAG_RULES; these checks run after them, before anything trains.
docs/reliability_keys.md has the table of every Trainer flag and stock callback option: works, or refused and why.
"""

import pytorch_lightning as pl
from hydra.utils import get_class
from omegaconf import DictConfig
from pytorch_lightning import callbacks as stock

from makemore_lab.errors import UserError

# Stock callbacks built around epochs or their own fit loop: the minibatch stream never ends an epoch.
EPOCH_DRIVEN = (
    stock.StochasticWeightAveraging,
    stock.GradientAccumulationScheduler,
    stock.BaseFinetuning,
    stock.BatchSizeFinder,
    stock.LearningRateFinder,
    stock.ModelPruning,
)
# ModelCheckpoint / EarlyStopping options that never fire here, with the neutral values that are fine.
NEVER_FIRES = {
    stock.ModelCheckpoint: {
        "train_time_interval": (
            (None,),
            "use callbacks.last_checkpoint.every_seconds (a checkpoint every N "
            "seconds of training) or every_n_train_steps",
        ),
        "every_n_epochs": ((None, 0, 1), "epochs never end: it saves at each validation, or use every_n_train_steps"),
        "save_on_train_epoch_end": ((None, False), "epochs never end: it saves at each validation"),
    },
    stock.EarlyStopping: {
        "check_on_train_epoch_end": ((None, False), "epochs never end: it checks at each validation"),
    },
}


def check_devices(trainer: DictConfig) -> None:
    """More than one process needs strategy=ddp: under any other strategy the engine's steps never average the
    ranks' gradients (each rank would train its own model and rank 0 report a single-process loss)."""
    strategy = trainer.get("strategy") or "auto"
    for key in ("devices", "num_nodes"):
        count = trainer.get(key) or 1
        if count > 1 and strategy != "ddp":
            raise UserError(
                f"trainer.{key}={count} needs trainer.strategy=ddp (use trainer=ddp): under "
                f"strategy={strategy} the ranks' gradients would never be averaged"
            )


def check_callbacks(nodes: dict[str, DictConfig]) -> None:
    """Refuse a stock callback, or a stock callback's option, that would silently never act (see NEVER_FIRES)."""
    for name, node in nodes.items():
        cls = get_class(node._target_)
        if not issubclass(cls, pl.Callback):
            raise UserError(f"callbacks.{name}: {node._target_} is not a Lightning Callback")
        if issubclass(cls, EPOCH_DRIVEN):
            raise UserError(
                f"callbacks.{name}: {cls.__name__} is not supported: it acts at epoch ends or runs its "
                "own fit loop, and the minibatch stream never ends an epoch"
            )
        for base, options in NEVER_FIRES.items():
            if not issubclass(cls, base):
                continue
            for option, (fine, why) in options.items():
                value = node.get(option)
                if value is not None and (value not in fine or isinstance(value, bool) != isinstance(fine[-1], bool)):
                    raise UserError(f"callbacks.{name}.{option}={value!r} would never take effect: {why}")
