"""A population is trained by the one Lightning Trainer (population/run.py): what a run accepts, a population honours
— another precision, trainer.max_time, a user's own callback — instead of sending the job to train alone."""

import json
import os
import textwrap

import pytest

from conftest import run_script
from makemore_lab.population import train_population
from makemore_lab.train import train

QUIET = ["~callbacks.progress_bar", "~callbacks.diagnostics", "~callbacks.sample_text", "logger=none"]
COMMON = ["model=mlp", "model.n_hidden=16", "trainer.accelerator=cpu", "threads=1", *QUIET]


def member(compose_train, tmp_path, name, *overrides):
    return compose_train(*COMMON, *overrides, f"paths.output_dir={tmp_path / name}")


@pytest.mark.slow
def test_a_bf16_mixed_population_trains_each_member_as_its_solo_bf16_run(compose_train, small_names, tmp_path):
    common = [f"data.path={small_names}", "trainer.precision=bf16-mixed", "trainer.max_steps=60"]
    lrs = ["optimizer.lr=0.1", "optimizer.lr=0.3"]
    results = train_population([member(compose_train, tmp_path, f"m{i}", *common, lr) for i, lr in enumerate(lrs)])
    for i, lr in enumerate(lrs):
        solo = train(member(compose_train, tmp_path, f"solo{i}", *common, lr))
        assert results[i]["population_size"] == 2 and results[i]["steps"] == 60
        # bf16 rounds each matmul's inputs to 8 bits of mantissa: the folded forward's batched matmul and the solo
        # run's matmul round alike, their sums differ in order only
        assert results[i]["val_loss"] == pytest.approx(solo["val_loss"], abs=0.02)
        assert results[i]["initial_loss"] == pytest.approx(solo["initial_loss"], abs=0.02)


@pytest.mark.slow
def test_max_time_stops_the_population_and_every_member_reports(compose_train, small_names, tmp_path):
    common = [f"data.path={small_names}", "trainer.max_time=00:00:00:02", "trainer.max_steps=10000000"]
    results = train_population(
        [member(compose_train, tmp_path, f"m{i}", *common, f"optimizer.lr={lr}") for i, lr in enumerate((0.1, 0.2))]
    )
    steps = {r["steps"] for r in results}
    assert len(steps) == 1 and 0 < steps.pop() < 10_000_000  # stopped together by Lightning's Timer
    for i in range(2):
        assert json.loads((tmp_path / f"m{i}" / "summary.json").read_text())["population_size"] == 2


CALLBACK = '''
import json
import pytorch_lightning as pl


class Record(pl.Callback):
    """Writes what a population-wide callback sees: its validations' steps and metric names."""

    def __init__(self, path):
        self.path, self.seen = path, []

    def on_validation_end(self, trainer, pl_module):
        self.seen.append([trainer.global_step, sorted(trainer.callback_metrics)])
        with open(self.path, "w") as f:
            json.dump(self.seen, f)
'''


@pytest.mark.slow
def test_a_users_own_callback_from_config_dir_trains_with_the_population(tmp_path, small_names, monkeypatch):
    (tmp_path / "user_callbacks.py").write_text(CALLBACK)
    config_dir = tmp_path / "configs" / "callbacks"
    config_dir.mkdir(parents=True)
    seen = tmp_path / "seen.json"
    (config_dir / "record.yaml").write_text(
        textwrap.dedent(f"""\
            record:
              _target_: user_callbacks.Record
              path: {seen}
            """)
    )
    sweep = tmp_path / "sweep"
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")  # the user's module
    result = run_script(
        "train.py",
        "-m",
        f"--config-dir={tmp_path / 'configs'}",
        "hydra/launcher=population",
        "callbacks=[default,record]",
        *COMMON,
        f"data.path={small_names}",
        "trainer.max_steps=40",
        "trainer.val_check_interval=20",
        "optimizer.lr=0.1,0.2",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "group 0: job(s) 0,1 as one population of 2" in result.stdout + result.stderr
    # One instance, on the population's Trainer: each member's metrics under members/<i>/ (docs/population.md)
    seen_at = [
        "members/0/lr",
        "members/0/train/loss",
        "members/0/val/loss",
        "members/1/lr",
        "members/1/train/loss",
        "members/1/val/loss",
        "step",
    ]
    assert json.loads(seen.read_text()) == [[20, seen_at], [40, seen_at]]
    for job in ("0", "1"):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["population_size"] == 2 and summary["steps"] == 40
