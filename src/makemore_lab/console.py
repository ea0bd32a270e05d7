"""Keep two third-party messages off the console of every run, each silenced at its source and nowhere else.

- Lightning's "💡 Tip: For seamless cloud ..." lines (litlogger, litmodels): `configure_logger` and the callback
  connector log them through `rank_zero_info` on the `pytorch_lightning.utilities.rank_zero` logger whenever no
  LitLogger is in use; Lightning has no switch for them short of using its cloud products. A filter on that one
  logger drops records starting with that text; the logger's other lines ("GPU available: ...") stay.
- torch 2.13's FutureWarning "`isinstance(treespec, LeafSpec)` is deprecated", raised from Lightning's own
  `pytorch_lightning/utilities/_pytree.py` (not from our code, nothing for a user to change): ignored for that
  message from that module only.
"""

import logging
import warnings

LIGHTNING_TIP = "💡 Tip: For seamless cloud"


def not_a_lightning_tip(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(LIGHTNING_TIP)


def quiet_third_party_messages() -> None:
    """Idempotent: called by every train() (the CLI's, the Python API's, the tests')."""
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not_a_lightning_tip not in rank_zero.filters:
        rank_zero.addFilter(not_a_lightning_tip)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"pytorch_lightning\.utilities\._pytree")
