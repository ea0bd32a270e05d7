"""Data preparation at scale: seconds and peak memory from 32k to 4M lines, and one 3,000-character outlier.

    python scripts/benchmark_data.py                        # 32k, 320k, 1.6M, 4M lines; table on stdout
    python scripts/benchmark_data.py --sizes 32000 320000 --write docs/data.md

Corpora are generated from names.txt (each line a name with 0-2 random letters appended: ~8 bytes a line, like
the 1.6M-line, 13M-character corpus of issue 15) in a temporary directory. Each measurement runs in a fresh
subprocess, one at a time, with OMP_NUM_THREADS=1, and its peak RSS is the child's own ru_maxrss (os.wait4):
- prepare: building CharDataModule(block_size=8) (reading, splitting, encoding the three splits);
- end to end: `python train.py data.path=... block_size=8 trainer.max_steps=200 callbacks=none logger=none`
  (the MLP: preparation, 200 steps, the exact final losses on all three splits, samples);
- outlier: 30,000 names and one 3,000-character line with model=transformer (block_size=null);
- `--eval`: makemore's transformer (block_size=null, names.txt), the exact final losses on the three splits
  scored window by window (how every model was scored before) and on whole items (now).
`--write FILE` replaces the table between the benchmark markers in FILE (docs/data.md).
"""

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMES = ROOT / "src" / "makemore_lab" / "datasets" / "names.txt"
BEGIN, END = "<!-- benchmark_data:begin -->", "<!-- benchmark_data:end -->"

PREPARE = """
import time
from makemore_lab.data import CharDataModule
start = time.perf_counter()
dm = CharDataModule(path={path!r}, block_size=8)
print("seconds", time.perf_counter() - start, "characters", sum(len(s) for s in dm.splits.values()))
"""
EVAL = """
import time, torch
from makemore_lab.data import CharDataModule
from makemore_lab.losses import split_loss
from makemore_lab.models.transformer import Transformer
dm = CharDataModule(block_size=None, train_on="items")
torch.manual_seed(0)
net = Transformer(dm.vocab_size, dm.block_size, init="kaiming")
for whole in (False, True):
    start = time.perf_counter()
    losses = [split_loss(net, dm, split, whole_items=whole) for split in ("train", "val", "test")]
    print("whole" if whole else "windows", time.perf_counter() - start, *losses)
"""
IMPORT_ONLY = "import makemore_lab.data, makemore_lab.train"


def generate(path: Path, lines: int, seed: int = 0) -> int:
    """`lines` names, each with 0-2 random letters appended; returns the file's size in bytes."""
    names = NAMES.read_text().split()
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    with path.open("w") as f:
        for start in range(0, lines, 100_000):
            chunk = [
                rng.choice(names) + "".join(rng.choices(letters, k=rng.randint(0, 2)))
                for _ in range(min(100_000, lines - start))
            ]
            f.write("\n".join(chunk) + "\n")
    return path.stat().st_size


def peak_rss_gb(usage) -> float:
    return usage.ru_maxrss / 2**20 if usage else float("nan")  # Linux: kilobytes


class Child(subprocess.Popen):
    """Popen that keeps the child's own resource usage (os.wait4), so each measurement's peak RSS is its own."""

    rusage = None

    def _try_wait(self, wait_flags):
        pid, status, self.rusage = os.wait4(self.pid, wait_flags)
        return pid, status


def measure(args: list[str], timeout: int = 900) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    start = time.perf_counter()
    with Child(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        try:
            out, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            out, err = child.communicate()
    return {
        "seconds": time.perf_counter() - start,
        "rss_gb": peak_rss_gb(child.rusage),
        "rc": child.returncode,
        "out": out,
        "err": err,
    }


def train_command(path: Path, run_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "train.py"),
        f"data.path={path}",
        "callbacks=none",
        "logger=none",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]


def human(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1e6 else f"{n / 1e3:g}k"


def benchmark(sizes: list[int], end_to_end: bool, outlier: bool, tmp: Path) -> list[str]:
    if not sizes:
        return [outlier_case(tmp)] if outlier else []
    base = measure([sys.executable, "-c", IMPORT_ONLY])
    rows = [
        f"Python + torch + Lightning imported, nothing else: {base['rss_gb']:.2f} GB peak RSS.",
        "",
        "| lines | file MB | characters + end marks | prepare s | prepare peak GB "
        "| 200 MLP steps end to end s | end to end peak GB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lines in sizes:
        path = tmp / f"corpus_{lines}.txt"
        size = generate(path, lines)
        prep = measure([sys.executable, "-c", PREPARE.format(path=str(path))])
        if prep["rc"] != 0:
            raise SystemExit(f"preparing {lines} lines failed:\n{prep['err'][-2000:]}")
        found = re.search(r"seconds ([\d.]+) characters (\d+)", prep["out"])
        e2e_s = e2e_gb = "-"
        if end_to_end:
            e2e = measure(train_command(path, tmp / f"run_{lines}", "block_size=8", "trainer.max_steps=200"))
            if e2e["rc"] != 0:
                raise SystemExit(f"training on {lines} lines failed:\n{e2e['err'][-2000:]}")
            e2e_s, e2e_gb = f"{e2e['seconds']:.1f}", f"{e2e['rss_gb']:.2f}"
        rows.append(
            f"| {human(lines)} | {size / 1e6:.1f} | {int(found[2]):,} | {float(found[1]):.1f} | "
            f"{prep['rss_gb']:.2f} | {e2e_s} | {e2e_gb} |"
        )
        print(rows[-1], flush=True)
        path.unlink()
    if outlier:
        rows += ["", outlier_case(tmp)]
    return rows


def outlier_case(tmp: Path) -> str:
    """30,000 names and one 3,000-character line, model=transformer, block_size=null (its default)."""
    path = tmp / "outlier.txt"
    names = NAMES.read_text().split()[:30000]
    names.insert(15000, "".join(random.Random(0).choices("abcdefghijklmnopqrstuvwxyz", k=3000)))
    path.write_text("\n".join(names) + "\n")
    result = measure(train_command(path, tmp / "run_outlier", "model=transformer", "trainer.max_steps=20"))
    said = (result["err"].strip().splitlines() or [""])[-1].replace(f"{tmp}/", "")
    line = (
        f"Outlier (30,000 names + one 3,000-character line, `model=transformer`): exit {result['rc']} after "
        f"{result['seconds']:.1f} s, peak {result['rss_gb']:.2f} GB: `{said}`"
    )
    print(line, flush=True)
    return line


def transformer_eval() -> str:
    result = measure([sys.executable, "-c", EVAL])
    if result["rc"] != 0:
        raise SystemExit(f"the transformer evaluation failed:\n{result['err'][-2000:]}")
    runs = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in result["out"].splitlines()}
    gap = max(abs(a - b) for a, b in zip(runs["windows"][1:], runs["whole"][1:]))
    line = (
        f"Transformer (makemore.py's sizes), exact losses on names.txt's three splits: window by window "
        f"{runs['windows'][0]:.1f} s, whole items {runs['whole'][0]:.1f} s (largest difference of the three "
        f"losses: {gap:.1e})"
    )
    print(line, flush=True)
    return line


def write_table(file: Path, rows: list[str]) -> None:
    text = file.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{file} has no {BEGIN} ... {END} markers to replace")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    file.write_text(head + BEGIN + "\n" + "\n".join(rows) + "\n" + END + tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[32_000, 320_000, 1_600_000, 4_000_000])
    parser.add_argument("--no-train", action="store_true", help="preparation only, no end-to-end runs")
    parser.add_argument("--no-outlier", action="store_true", help="skip the 3,000-character outlier case")
    parser.add_argument("--eval", action="store_true", help="also time the transformer's exact final losses")
    parser.add_argument("--write", type=Path, help="replace the table between the markers in this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = benchmark(args.sizes, not args.no_train, not args.no_outlier, Path(tmp))
    if args.eval:
        rows += ["", transformer_eval()]
    print("\n".join(rows))
    if args.write:
        write_table(args.write, rows)


if __name__ == "__main__":
    main()
