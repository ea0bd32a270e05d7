"""Population-based training inside a population (pbt=default, population/pbt.py): the worst members copy the best
ones' weights and optimizer state at a round, explore their hyperparameters, and record their lineage."""

import json
from pathlib import Path

import pytest
import torch

from conftest import run_script
from makemore_lab.checkpoint import net_state_dict, read_checkpoint
from makemore_lab.errors import UserError
from makemore_lab.population import train_population
from makemore_lab.train import train

QUIET = ["~callbacks.progress_bar", "~callbacks.diagnostics", "~callbacks.sample_text", "logger=none"]
COMMON = ["model=mlp", "model.n_hidden=16", "schedule=constant", "pbt=default", "trainer.accelerator=cpu", *QUIET]
LRS = [0.02, 0.3, 0.1]  # three members: the bottom one copies the top one (quantile 0.25 of 3: one each)


def members(compose_train, where: Path, small_names, *overrides):
    return [
        compose_train(
            *COMMON,
            f"data.path={small_names}",
            f"optimizer.lr={lr}",
            f"seed={i}",
            *overrides,
            f"paths.output_dir={where / str(i)}",
        )
        for i, lr in enumerate(LRS)
    ]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return net_state_dict(read_checkpoint(run_dir / "checkpoints" / "last.ckpt"))


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.slow
def test_a_member_that_copied_continues_exactly_from_the_copied_state(compose_train, small_names, tmp_path):
    """Up to step 40 the members train as without PBT (run `before`, which stops there); at 40 the worst copies the
    best; from there it trains on exactly as the best's step-40 checkpoint would, with its new lr."""
    rounds = ["pbt.interval=40", "trainer.val_check_interval=40"]
    train_population(members(compose_train, tmp_path / "before", small_names, *rounds, "trainer.max_steps=40"))
    results = train_population(members(compose_train, tmp_path / "pbt", small_names, *rounds, "trainer.max_steps=80"))
    lineages = {i: r["pbt"]["lineage"] for i, r in enumerate(results)}
    [(loser, [entry])] = [(i, lineage) for i, lineage in lineages.items() if lineage]
    assert entry["step"] == 40 and entry["from"] != str(loser)
    assert entry["val_loss"] > entry["from_val_loss"]  # the worst copied the best
    lr = entry["hyperparameters"]["optimizer.lr"]
    assert results[loser]["pbt"]["hyperparameters"] == {"optimizer.lr": lr} and min(LRS) <= lr <= max(LRS)
    donor_checkpoint = tmp_path / "before" / entry["from"] / "checkpoints" / "last.ckpt"
    [rebuilt] = train_population(
        [
            compose_train(
                *COMMON[:-5],
                *QUIET,
                "trainer.accelerator=cpu",
                f"data.path={small_names}",
                f"optimizer.lr={lr}",
                f"seed={loser}",  # its minibatch order (data.seed is ${seed}): a copied member keeps its own
                "trainer.val_check_interval=40",
                "trainer.max_steps=80",
                f"ckpt_path={donor_checkpoint}",
                f"paths.output_dir={tmp_path / 'rebuilt'}",
            )
        ]
    )
    assert rebuilt["resumed_from_step"] == 40 and rebuilt["steps"] == 80
    ours, theirs = weights(tmp_path / "pbt" / str(loser)), weights(tmp_path / "rebuilt")
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6)
    assert results[loser]["val_loss"] == pytest.approx(rebuilt["val_loss"], abs=1e-5)
    for i in set(range(len(LRS))) - {loser}:
        assert lineages[i] == [] and results[i]["pbt"]["hyperparameters"] == {"optimizer.lr": LRS[i]}


@pytest.mark.slow
def test_a_resumed_pbt_population_equals_an_uninterrupted_one_lineage_included(compose_train, small_names, tmp_path):
    """Stopped between two rounds (step 60, rounds at 40 and 80) and resumed: the weights and the lineage are the
    uninterrupted population's."""
    rounds = ["pbt.interval=40", "trainer.val_check_interval=20"]
    whole = train_population(members(compose_train, tmp_path / "whole", small_names, *rounds, "trainer.max_steps=120"))
    train_population(members(compose_train, tmp_path / "parts", small_names, *rounds, "trainer.max_steps=60"))
    for i in range(len(LRS)):  # as a stopped population leaves its members: last.ckpt at step 60, no summary.json
        (tmp_path / "parts" / str(i) / "summary.json").unlink()
    resumed = train_population(
        members(
            compose_train,
            tmp_path / "parts",
            small_names,
            *rounds,
            "trainer.max_steps=120",
            "ckpt_path=${paths.output_dir}/checkpoints/last.ckpt",
        )
    )
    assert any(r["pbt"]["lineage"] for r in whole)
    for i in range(len(LRS)):
        assert resumed[i]["resumed_from_step"] == 60
        assert resumed[i]["pbt"] == whole[i]["pbt"]
        ours, theirs = weights(tmp_path / "parts" / str(i)), weights(tmp_path / "whole" / str(i))
        for key in theirs:
            assert torch.equal(ours[key], theirs[key]), key


def test_pbt_refuses_what_cannot_work_in_one_line(compose_train):
    with pytest.raises(UserError, match="pbt trains the members of one population"):
        train(compose_train("pbt=default"))
    from makemore_lab.population.pbt import check

    cfg = compose_train("pbt=default", "pbt.keys=[model.n_hidden]")
    with pytest.raises(UserError, match=r"pbt.keys: model.n_hidden cannot be explored: .* a model key changes shapes"):
        check(cfg, population=True)
    cfg = compose_train("pbt=default", "pbt.interval=150", "trainer.val_check_interval=100")
    with pytest.raises(UserError, match=r"pbt.interval must be a positive multiple of trainer.val_check_interval"):
        check(cfg, population=True)
    for bad, message in (("pbt.quantile=0.7", "pbt.quantile"), ("pbt.perturb=[0.8,-1]", "pbt.perturb")):
        with pytest.raises(UserError, match=message):
            check(compose_train("pbt=default", bad), population=True)


@pytest.mark.slow
def test_a_pbt_sweep_through_train_py_leaves_lineage_in_its_jobs(tmp_path, small_names):
    sweep = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "hydra/launcher=population",
        *COMMON,
        "threads=2",  # which would cut the group into two populations side by side: PBT keeps it whole
        f"data.path={small_names}",
        "optimizer.lr=0.01,0.02,0.03,0.05,0.1,0.2,0.3,0.5",
        "pbt.interval=40",
        "trainer.val_check_interval=40",
        "trainer.max_steps=120",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "as one population of 8" in result.stdout + result.stderr and "side by side" not in result.stderr
    jobs = [summary(sweep / str(i)) for i in range(8)]
    assert all(job["population_size"] == 8 and "pbt" in job for job in jobs)
    copied = [job for job in jobs if job["pbt"]["lineage"]]
    assert copied and all(e["step"] in (40, 80) for job in copied for e in job["pbt"]["lineage"])
    assert "pbt: step 40: copied" in (sweep / Path(copied[0]["output_dir"]).name / "train.log").read_text()
    table = (sweep / "summary.md").read_text()
    last = copied[0]["pbt"]["lineage"][-1]
    assert "| pbt: copied |" in table and f"the last of job {last['from']} at step {last['step']}" in table
