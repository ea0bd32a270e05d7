"""What a population's worker process needs imported, imported once in multiprocessing's fork server, which every
worker is then forked from (processes.py). Imported by the fork server only: never by a launcher or a worker.

The launcher starts the fork server as soon as Hydra sets the launcher up, so this runs on the other core while the
launcher composes and prepares the sweep's jobs; a worker forked from it starts with torch, Lightning, the engine
and the models already imported, instead of spending several seconds on them. Nothing here runs a torch operation
or starts a thread (torch's thread pools start in each worker, at its first parallel operation), so each fork
starts as clean as a fresh interpreter.
"""

import importlib
import logging
import pkgutil
import signal

# A Ctrl-C at the terminal reaches every process of the group: the launcher reports it. multiprocessing's server
# ignores SIGINT only once these imports are done; a Ctrl-C during them would print this process's traceback.
signal.signal(signal.SIGINT, signal.SIG_IGN)

# Lightning adds a console handler of its own where the root logger has none when it is imported; a worker logs
# through Hydra's handlers (processes.serve configures them): imported with a root handler in place, as in a
# launcher's process, where Hydra's are in place.
_during_imports = logging.NullHandler()
logging.getLogger().addHandler(_during_imports)
import makemore_lab.data.module  # noqa: E402, F401
import makemore_lab.models  # noqa: E402
import makemore_lab.population.train  # noqa: E402, F401  - torch, Lightning, TensorBoard, matplotlib, the engine

for _model in pkgutil.iter_modules(
    makemore_lab.models.__path__
):  # every model file: a member's instantiate() imports one
    importlib.import_module(f"makemore_lab.models.{_model.name}")
logging.getLogger().removeHandler(_during_imports)
