"""Train a character-level language model: `python train.py model=wavenet` (see configs/train.yaml)."""

import signal
import sys


def interrupted(signum, frame):  # Ctrl-C while starting up (imports, config, data): one line, not a traceback
    print("error: interrupted before training started; nothing was saved", file=sys.stderr)
    sys.exit(130)


signal.signal(signal.SIGINT, interrupted)  # training installs its own handler (src/makemore_lab/resume.py)

from makemore_lab.hydra_app import entry_point  # noqa: E402  (after the handler: importing torch takes seconds)
from makemore_lab.train import run  # noqa: E402

main = entry_point("train", run)  # Hydra's own errors in one line too (src/makemore_lab/hydra_app.py)

if __name__ == "__main__":
    main()
