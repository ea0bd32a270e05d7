"""Lecture 3's judgements vs the health report's verdicts: the agreement table of docs/diagnostics.md.

    python scripts/diagnostics_agreement.py                      # 1,000 steps each on names.txt (~2 min on a CPU)
    python scripts/diagnostics_agreement.py --steps 300 --names 4000

Each setup is trained in the lecture's setting (constant lr, SGD 0.1, batch 32, block 3, n_embd 10, n_hidden 100;
the transformer with its own defaults) and its `health` printed as a Markdown table row, with the numbers behind it.
"""

import argparse
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from makemore_lab.train import train

CONFIGS = str(Path(__file__).resolve().parents[1] / "src" / "makemore_lab" / "configs")
NAMES = Path(__file__).resolve().parents[1] / "src" / "makemore_lab" / "datasets" / "names.txt"
LECTURE = [
    "optimizer=sgd",
    "optimizer.lr=0.1",
    "schedule=constant",
    "data.batch_size=32",
    "block_size=3",
    "model.n_embd=10",
    "model.n_hidden=100",
]
DEEP = ["model=mlp_bn", "model.batchnorm=false"]
# (setup as the table writes it, overrides, the lecture's judgement, the rules that judgement means must fail)
SETUPS = [
    ("`model=mlp` (default, fixed init)", ["model=mlp", *LECTURE], "fixed", set()),
    (
        "`model=mlp model.init=naive`",
        ["model=mlp", "model.init=naive", *LECTURE],
        "confidently wrong start, saturated tanh",
        {"initial_loss", "saturation"},
    ),
    ("`model=mlp_bn model.batchnorm=false model.gain=1.6667`", [*DEEP, "model.gain=1.6667", *LECTURE], "good", set()),
    ("`… model.gain=1.0`", [*DEEP, "model.gain=1.0", *LECTURE], "activations shrink with depth", {"activation_std"}),
    (
        "`… model.gain=0.5`",
        [*DEEP, "model.gain=0.5", *LECTURE],
        "collapse; gradients grow with depth",
        {"activation_std", "gradient_scale"},
    ),
    ("`… model.gain=3.0`", [*DEEP, "model.gain=3.0", *LECTURE], "over-saturated", {"saturation"}),
    ("`model=mlp_bn` (with BatchNorm)", ["model=mlp_bn", *LECTURE], "good", set()),
    (
        "`model=mlp_bn optimizer.lr=0.001`",
        ["model=mlp_bn", *LECTURE, "optimizer.lr=0.001"],
        "updates ~1e-5 of the data: too slow",
        {"update_data"},
    ),
    ("`model=transformer` (its defaults, AdamW)", ["model=transformer", "data.batch_size=32"], "–", set()),
]
COMMON = [
    "trainer.accelerator=cpu",
    "callbacks.diagnostics.figures=false",
    "~callbacks.sample_text",
    "~callbacks.model_checkpoint",
    "~callbacks.last_checkpoint",
    "~callbacks.progress_bar",
    "num_samples=1",
    "++trainer.enable_model_summary=false",
]


def run(overrides: list[str], steps: int, names: Path | None, out: Path) -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIGS):
        cfg = compose(
            "train",
            overrides=[
                *overrides,
                *COMMON,
                f"trainer.max_steps={steps}",
                f"trainer.val_check_interval={steps}",
                f"paths.output_dir={out}",
                *([f"data.path={names}"] if names else []),
            ],
        )
    return train(cfg)


def verdict(health: dict) -> str:
    broken = [name for name, rule in health["rules"].items() if rule["ok"] is False]
    return "healthy" if not broken else "flagged: " + ", ".join(broken)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--names", type=int, default=None, help="train on the first N names of names.txt")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        names = None
        if args.names:
            names = Path(tmp) / "names.txt"
            names.write_text("\n".join(NAMES.read_text().split()[: args.names]) + "\n")
        print("| setup | lecture's judgement | verdict | agrees |\n|---|---|---|---|")
        details = []
        for i, (setup, overrides, judgement, expected) in enumerate(SETUPS):
            health = run(overrides, args.steps, names, Path(tmp) / f"run{i}")["health"]
            broken = {name for name, rule in health["rules"].items() if rule["ok"] is False}
            agrees = expected <= broken and bool(broken) == bool(expected)  # the lecture's fault is among the flags
            print(f"| {setup} | {judgement} | {verdict(health)} | {'yes' if agrees else 'NO'} |", flush=True)
            details.append((setup, health))
        for setup, health in details:
            print(f"\n{setup}")
            for name, rule in health["rules"].items():
                print(f"  {name}: {rule['ok']}: {rule['message']}")


if __name__ == "__main__":
    main()
