"""conftest.run_script forks its runs from a pre-imported Python (tests/preimported_python.py): what a forked run
prints and returns must be what a fresh `python train.py` prints and returns, or every subprocess test would test
something a user never runs."""

import re

from conftest import TINY, run_script

# a log line's logger and level, after its timestamp (a progress bar's text, with its rates, is left out)
LOGGER = re.compile(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]\[([\w.]+)\]\[(\w+)\]")


def fresh(script: str, *args: str):
    return run_script(script, *args, python_flags=("-B",))  # any Python flag: a fresh interpreter


def test_a_forked_run_exits_and_prints_as_a_fresh_interpreter(tmp_path, small_names):
    bad = ["data.path=/no/such/file.txt"]
    good = [*TINY, f"data.path={small_names}", "~callbacks.progress_bar"]
    for name, args in (("bad", bad), ("good", good)):
        forked = run_script("train.py", *args, f"hydra.run.dir={tmp_path / name / 'forked'}")
        alone = fresh("train.py", *args, f"hydra.run.dir={tmp_path / name / 'fresh'}")
        assert forked.returncode == alone.returncode == (2 if name == "bad" else 0), (forked.stderr, alone.stderr)
        # stderr: the error line (or nothing: Lightning's own console lines are quiet in both)
        assert forked.stderr == alone.stderr, name
        assert LOGGER.findall(forked.stdout) == LOGGER.findall(alone.stdout) != [], name
