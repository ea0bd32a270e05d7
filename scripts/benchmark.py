"""Training throughput: a hand-written PyTorch loop vs the framework, same model, batch, optimizer and data.

    python scripts/benchmark.py                      # mlp, wavenet, transformer; table on stdout
    python scripts/benchmark.py --models mlp --steps 20000 --repeats 5
    python scripts/benchmark.py --time-to-target     # lecture-5 WaveNet: wall time to val loss <= 2.00

The hand-written loop is the lectures' own: index a random minibatch out of the training tensors, forward,
cross-entropy, zero_grad, backward, optimizer step. The framework run is `train(cfg)` exactly as
`python train.py model=<m>` runs it (TensorBoard logging, checkpoint callback, progress bar off to keep the
table readable), with and without the diagnostics callbacks. Both are timed over the same steps after a warm-up,
alternately, and the best of `--repeats` is kept for each (the least disturbed by other work on the machine).
"""

import argparse
import contextlib
import io
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from torch.nn import functional as F

from makemore_lab.losses import IGNORE, item_targets
from makemore_lab.train import train

CONFIGS = str(Path(__file__).resolve().parents[1] / "src" / "makemore_lab" / "configs")


def compose_cfg(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIGS):
        return compose("train", overrides=overrides)


def all_windows(data, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every window of a split as two tensors, the lectures' X/Y (fine at names.txt's size)."""
    windows = data.splits[split]
    return windows.windows(torch.arange(len(windows)), data.block_size)


def framework_rate(model: str, steps: int, warmup: int, diagnostics: bool, device: str, extra: list[str]) -> float:
    with tempfile.TemporaryDirectory() as out:
        overrides = [
            f"model={model}",
            f"trainer.max_steps={warmup + steps}",
            f"trainer.val_check_interval={warmup + steps}",  # validate once, after the timed window
            f"trainer.accelerator={device}",
            "~callbacks.progress_bar",
            "+callbacks.throughput._target_=makemore_lab.callbacks.throughput.Throughput",
            f"+callbacks.throughput.warmup_steps={warmup}",
            f"paths.output_dir={out}",
            "num_samples=1",
            *extra,
        ]
        if not diagnostics:
            overrides.append("~callbacks.diagnostics")
        with contextlib.redirect_stdout(io.StringIO()):
            rate = train(compose_cfg(overrides))["steady_steps_per_second"]
        if rate is None:  # the timed window held fewer than two training calls
            raise SystemExit(f"error: {steps} steps are too few to time {model}: use a larger --steps")
        return rate


def hand_written_rate(model: str, steps: int, warmup: int, device: str, extra: list[str]) -> float:
    """The lectures' loop over the same model class, optimizer and training tensors."""
    cfg = compose_cfg([f"model={model}", "paths.output_dir=.", *extra])
    torch.manual_seed(cfg.seed)
    data = instantiate(cfg.data)
    # The lectures' Xtr/Ytr: every training example materialised (fine at names.txt's size).
    x, y = (t.to(device) for t in data.train_examples[torch.arange(data.num_train_examples)])
    net = instantiate(cfg.model, vocab_size=data.vocab_size, block_size=data.block_size).to(device)
    optimizer = instantiate(cfg.optimizer)(params=net.parameters())
    batch_size = cfg.data.batch_size
    for step in range(warmup + steps):
        if step == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        ix = torch.randint(0, x.shape[0], (batch_size,), device=device)
        xb, yb = x[ix], y[ix]
        if data.train_on == "items":  # makemore.py's loop: whole items, every position scored, padding ignored
            logits = net(xb, all_positions=True).flatten(0, 1)
            loss = F.cross_entropy(logits, item_targets(xb, yb).flatten(), ignore_index=IGNORE)
        else:
            loss = F.cross_entropy(net(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def throughput_table(models, steps, repeats, device, diagnostics_modes, extra):
    rows = []
    for model in models:
        n = steps[model]
        warmup = max(100, n // 10)
        hand, framework = [], {mode: [] for mode in diagnostics_modes}
        for _ in range(repeats):  # alternate, so that load from elsewhere hits both alike
            hand.append(hand_written_rate(model, n, warmup, device, extra))
            for mode in diagnostics_modes:
                framework[mode].append(framework_rate(model, n, warmup, mode, device, extra))
        for mode in diagnostics_modes:
            rows.append(
                {
                    "model": model,
                    "device": device,
                    "steps": n,
                    "diagnostics": "on" if mode else "off",
                    "hand_steps_per_s": max(hand),
                    "framework_steps_per_s": max(framework[mode]),
                    "ratio": max(framework[mode]) / max(hand),
                }
            )
    return rows


def time_to_target(target: float, device: str, max_steps: int, check_every: int) -> dict:
    """Lecture 5's WaveNet and schedule (lr 0.1, then 0.01 for the last quarter); wall time until val loss <= target."""
    cfg = compose_cfg(["model=wavenet", "paths.output_dir=.", "optimizer.lr=0.1"])
    torch.manual_seed(cfg.seed)
    data = instantiate(cfg.data)
    xv, yv = (t.to(device) for t in all_windows(data, "val"))
    x, y = (t.to(device) for t in all_windows(data, "train"))
    net = instantiate(cfg.model, vocab_size=data.vocab_size, block_size=data.block_size).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    start = time.perf_counter()
    for step in range(max_steps):
        if step == int(0.75 * max_steps):
            optimizer.param_groups[0]["lr"] = 0.01
        ix = torch.randint(0, x.shape[0], (32,), device=device)
        loss = F.cross_entropy(net(x[ix]), y[ix])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % check_every == 0:
            net.eval()
            with torch.inference_mode():
                val = F.cross_entropy(net(xv), yv).item()
            net.train()
            if val <= target:
                break
    hand = {"seconds": time.perf_counter() - start, "steps": step + 1, "val_loss": val}

    with tempfile.TemporaryDirectory() as out:
        overrides = [
            "model=wavenet",
            f"trainer.max_steps={max_steps}",
            f"trainer.val_check_interval={check_every}",
            f"trainer.accelerator={device}",
            "schedule.at=0.75",
            f"paths.output_dir={out}",
            "~callbacks.progress_bar",
            "+callbacks.early_stop._target_=pytorch_lightning.callbacks.EarlyStopping",
            "+callbacks.early_stop.monitor=val/loss",
            f"+callbacks.early_stop.stopping_threshold={target}",
            "+callbacks.early_stop.patience=1000000",
            "+callbacks.early_stop.check_on_train_epoch_end=false",
        ]
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            summary = train(compose_cfg(overrides))
        framework = {"seconds": time.perf_counter() - start, "steps": summary["steps"], "val_loss": summary["val_loss"]}
    return {"target": target, "hand": hand, "framework": framework}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mlp", "wavenet", "transformer"])
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default: per model)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-diagnostics-off", action="store_true", help="only measure with diagnostics on")
    parser.add_argument("--time-to-target", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for both loops, e.g. data.batch_size=256")
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("makemore_lab").setLevel(logging.ERROR)

    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"device {args.device}"
    )
    if args.time_to_target:
        result = time_to_target(2.00, args.device, max_steps=200_000, check_every=2000)
        print(json.dumps(result, indent=2))
        return
    default_steps = {"mlp": 20_000, "wavenet": 5_000, "transformer": 1_000, "bigram": 20_000, "mlp_bn": 5_000}
    steps = {m: args.steps or default_steps.get(m, 2_000) for m in args.models}
    modes = [True] if args.no_diagnostics_off else [True, False]
    rows = throughput_table(args.models, steps, args.repeats, args.device, modes, args.overrides)
    print("| model | device | diagnostics | hand-written steps/s | framework steps/s | ratio |")
    print("|---|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['device']} | {r['diagnostics']} | {r['hand_steps_per_s']:,.0f} | "
            f"{r['framework_steps_per_s']:,.0f} | {r['ratio']:.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
