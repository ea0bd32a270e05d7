"""What a `makemore_lab.train(...)` call costs next to the command it runs: the API runs `makemore-train` in a
child process (src/makemore_lab/api.py), so each call pays a Python start-up and the torch/Lightning import, as the
command does; on top of it the API composes the config once (to name the run dir) and relays the output.

    python scripts/benchmark_api.py [--repeats 3] [--steps 20]

Prints the median wall time of a tiny run (debug=fast, no callbacks or logger) three ways, in a temporary dir:
the console script as a subprocess, the API call, and the API call's own part (the call minus the command).
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    overrides = ["debug=fast", f"trainer.max_steps={args.steps}", "callbacks=none", "logger=none", "threads=1"]
    console = Path(sys.executable).parent / "makemore-train"
    api_call = f"import makemore_lab; makemore_lab.train(*{overrides!r})"
    cli, api = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            start = time.perf_counter()
            subprocess.run([str(console), *overrides], cwd=tmp, check=True, capture_output=True)
            cli.append(time.perf_counter() - start)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", api_call], cwd=tmp, check=True, capture_output=True)
            api.append(time.perf_counter() - start)
    cli_s, api_s = statistics.median(cli), statistics.median(api)
    print(f"makemore-train {' '.join(overrides)}: {cli_s:.2f} s (median of {args.repeats})")
    print(f"makemore_lab.train(...) from a fresh python: {api_s:.2f} s")
    print(f"the API's own part (python start-up, import makemore_lab and Hydra, compose, relay): {api_s - cli_s:.2f} s")


if __name__ == "__main__":
    main()
