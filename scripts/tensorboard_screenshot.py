"""docs/tensorboard.png: TensorBoard showing a three-model sweep, as a user opens it, in a headless browser.

    python scripts/tensorboard_screenshot.py [--out docs/tensorboard.png] [--steps 1000] [--browser chromium]

Trains `python train.py -m model=mlp,wavenet,transformer` for --steps steps into a temporary sweep dir, starts
`tensorboard --logdir <sweep dir>` on a free port, and has the browser (Debian's `chromium`: `apt-get install
chromium`) save a screenshot of the Time Series page with the two loss cards pinned on top (TensorBoard's own
`pinnedCards` link; any user can open the same link). About a minute and a half on a 2-core CPU.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PINNED = [{"plugin": "scalars", "tag": "train/loss"}, {"plugin": "scalars", "tag": "val/loss"}]


def pinned_url(port: int) -> str:
    """The Time Series page with train/loss and val/loss pinned above every other card."""
    query = urllib.parse.urlencode({"pinnedCards": json.dumps(PINNED, separators=(",", ":"))})
    return f"http://localhost:{port}/?{query}#timeseries"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def train_sweep(sweep_dir: Path, steps: int) -> None:
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "model=mlp,wavenet,transformer",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={max(steps // 5, 1)}",
        "num_samples=3",
        "callbacks.diagnostics.every_n_steps=100",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=sweep_dir.parent, check=True, stdout=subprocess.DEVNULL)


def wait_until_serving(port: int, tensorboard: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tensorboard.poll() is not None:
            raise SystemExit(f"tensorboard exited with status {tensorboard.returncode}")
        try:
            with urllib.request.urlopen(f"http://localhost:{port}/data/runs", timeout=2) as reply:
                if len(json.loads(reply.read())) >= 3:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"tensorboard did not serve three runs within {timeout:.0f} s")


def screenshot(browser: str, url: str, out: Path, width: int, height: int) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "--virtual-time-budget=20000",
                f"--screenshot={out}",
                url,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=180,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "tensorboard.png")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--browser", default="chromium")
    parser.add_argument("--size", default="1400,1000", help="the browser window, width,height in pixels")
    args = parser.parse_args()
    if shutil.which(args.browser) is None:
        raise SystemExit(f"no {args.browser} on PATH (Debian: apt-get install chromium)")
    width, height = (int(v) for v in args.size.split(","))
    tensorboard_bin = Path(sys.executable).with_name("tensorboard")
    with tempfile.TemporaryDirectory() as tmp:
        sweep_dir = Path(tmp) / "sweep"
        train_sweep(sweep_dir, args.steps)
        port = free_port()
        tensorboard = subprocess.Popen(
            [str(tensorboard_bin), "--logdir", str(sweep_dir), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        try:
            wait_until_serving(port, tensorboard)
            url = pinned_url(port)
            print("$", args.browser, "--headless --screenshot", url, flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            screenshot(args.browser, url, args.out, width, height)
        finally:
            tensorboard.terminate()
            tensorboard.wait(timeout=30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
