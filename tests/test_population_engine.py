"""The population engine: members train exactly as their solo runs, each in its own job dir, isolated from the rest."""

import json
import logging
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, read_events, read_scalars, run_script
from makemore_lab.checkpoint import net_state_dict, read_checkpoint
from makemore_lab.errors import TrainingDiverged, UserError
from makemore_lab.population import population_refusal, train_population
from makemore_lab.population.member import Member
from makemore_lab.population.run import PopulationLM
from makemore_lab.train import train

QUIET = ["~callbacks.diagnostics", "~callbacks.sample_text", "~callbacks.progress_bar"]
TINY_MODELS = {  # tiny widths: the comparison is about the mechanism, not the model's size
    "mlp": ["model.n_hidden=16"],
    "mlp_bn": ["model.n_hidden=8", "model.n_layers=2"],
    "wavenet": ["model.n_hidden=8", "model.n_embd=4"],
    "rnn": ["model.n_hidden=8", "model.n_embd=8"],
    "transformer": ["model.n_embd=8", "model.n_head=2", "model.n_layer=1"],
}
# Two members that differ in everything a sweep varies: optimizer and lr, initial weights, minibatch order.
MEMBERS = [
    ["optimizer=sgd", "optimizer.lr=0.2", "seed=1", "data.seed=0", "trainer.gradient_clip_val=0.5"],
    ["optimizer=adamw", "optimizer.lr=0.01", "seed=2", "data.seed=1"],
]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return net_state_dict(read_checkpoint(run_dir / "checkpoints" / "last.ckpt"))


def compose_member(compose_train, tmp_path, name: str, *overrides: str):
    return compose_train(*overrides, f"paths.output_dir={tmp_path / name}")


# Models whose code treats a minibatch's rows independently train folded into the batch dimension (checked against
# vmap on the first minibatch); the rnn's learned start state is expanded to the batch, so it keeps vmap.
FOLDED = {"mlp", "mlp_bn", "wavenet", "transformer"}


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(TINY_MODELS))
def test_members_train_exactly_as_their_solo_runs(compose_train, small_names, tmp_path, model, caplog):
    caplog.set_level(logging.INFO, logger="makemore_lab.population.stacked")
    assert_members_match_solo_runs(compose_train, small_names, tmp_path, model, MEMBERS)
    forward = "the 2 members folded into the batch dimension" if model in FOLDED else "population forward: vmap"
    assert forward in caplog.text


@pytest.mark.slow
def test_plain_sgd_members_step_together_exactly(compose_train, small_names, tmp_path):
    """Members all on SGD without momentum take the engine's one-op-per-tensor step: still their solo runs."""
    members = [["optimizer.lr=0.2", "seed=1"], ["optimizer.lr=0.05", "optimizer.weight_decay=0.01", "data.seed=3"]]
    assert_members_match_solo_runs(compose_train, small_names, tmp_path, "mlp", members)


def assert_members_match_solo_runs(compose_train, small_names, tmp_path, model, member_overrides):
    common = [
        f"model={model}",
        f"data.path={small_names}",
        "trainer.max_steps=100",
        "trainer.val_check_interval=50",
        *QUIET,
        *TINY_MODELS[model],
    ]
    members = [
        compose_member(compose_train, tmp_path, f"member{i}", *common, *m) for i, m in enumerate(member_overrides)
    ]
    results = train_population(members)
    for i, overrides in enumerate(member_overrides):
        solo = train(compose_member(compose_train, tmp_path, f"solo{i}", *common, *overrides))
        assert results[i]["population_size"] == len(members) and results[i]["steps"] == 100
        assert results[i]["val_loss"] == pytest.approx(solo["val_loss"], abs=1e-4)
        assert results[i]["initial_loss"] == pytest.approx(solo["initial_loss"], abs=1e-5)
        ours, theirs = weights(tmp_path / f"member{i}"), weights(tmp_path / f"solo{i}")
        assert ours.keys() == theirs.keys()
        for key in ours:
            a, b = ours[key], theirs[key]
            if model == "transformer" and key.endswith("attn.qkv.bias") and "optimizer=adamw" in overrides:
                # The key bias adds q.b to every score of a row: softmax cancels it, its true gradient is 0, and
                # Adam turns the ~1e-9 float noise left there (different in any two kernels) into lr-sized steps
                # that change no output. The query and value biases are compared.
                width = a.numel() // 3
                a, b = torch.cat([a[:width], a[2 * width :]]), torch.cat([b[:width], b[2 * width :]])
            assert torch.allclose(a, b, atol=1e-4), f"{model} member {i}: {key}"


def numbers(node, prefix: str = "") -> dict:
    """Every number in a nested summary (the health verdict, a diagnostics history) by its path."""
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in numbers(value, f"{prefix}{key}.").items()}
    if isinstance(node, list):
        return {k: v for i, value in enumerate(node) for k, v in numbers(value, f"{prefix}{i}.").items()}
    return {prefix: node}


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["optimizer.lr=0.2", "optimizer=adamw"])  # vectorised SGD; per-member steps
def test_members_get_their_solo_runs_diagnostics_health_verdict_and_samples(
    compose_train, small_names, tmp_path, optimizer, monkeypatch
):
    """The diagnostics and sample_text callbacks run per member, on the steps they measure, as in a solo run: the
    same measurements in TensorBoard, the same health verdict in summary.json, the same samples, the figures; and
    the members make their solo runs' own steps on those steps only."""
    figures = "callbacks.diagnostics.figures=" + ("true" if optimizer.endswith("0.2") else "false")
    common = [
        "model=mlp",
        f"data.path={small_names}",
        "trainer.max_steps=40",
        "trainer.val_check_interval=20",
        "model.n_hidden=16",
        "callbacks.diagnostics.every_n_steps=10",
        "callbacks.sample_text.every_n_steps=20",
        "~callbacks.progress_bar",
        optimizer,
        figures,
    ]
    members = [compose_member(compose_train, tmp_path, f"member{i}", *common, f"seed={i}") for i in range(2)]
    solo_losses, made = PopulationLM.solo_losses, []
    monkeypatch.setattr(
        PopulationLM, "solo_losses", lambda self, x, y, step: made.append(step) or solo_losses(self, x, y, step)
    )
    results = train_population(members)
    assert made == [0, 10, 19, 20, 30, 39]  # the diagnostics' measured steps and sample_text's
    for i in range(2):
        solo = train(compose_member(compose_train, tmp_path, f"solo{i}", *common, f"seed={i}"))
        ours, theirs = numbers(results[i]["health"]), numbers(solo["health"])
        assert ours.keys() == theirs.keys() and len(ours) > 5
        for key, value in theirs.items():
            assert ours[key] == (pytest.approx(value, rel=1e-3, abs=1e-5) if isinstance(value, float) else value), key
        ours, theirs = read_events(tmp_path / f"member{i}"), read_events(tmp_path / f"solo{i}")
        measured = [
            tag
            for tag in theirs["scalars"]
            if tag.startswith(
                ("saturation/", "grad_data/", "update_data/", "dead/", "activation_std/", "initial_loss/")
            )
        ]
        assert len(measured) >= 6
        for tag in measured:
            (steps, values), (solo_steps, solo_values) = zip(*ours["scalars"][tag]), zip(*theirs["scalars"][tag])
            assert steps == solo_steps and values == pytest.approx(solo_values, rel=1e-3, abs=1e-5), tag
        assert [s for s, _ in theirs["scalars"]["saturation/act"]] == [0, 10, 20, 30, 39]
        assert ours["histograms"].keys() == theirs["histograms"].keys() != set()
        assert ours["images"].keys() == theirs["images"].keys()
        assert ours["text"]["samples"] == theirs["text"]["samples"] and len(theirs["text"]["samples"]) == 2
        assert ours["text"]["health"] and ours["text"]["health"][0][0] == 40
        if figures.endswith("true"):
            assert (
                sorted(p.name for p in (tmp_path / f"member{i}" / "figures").glob("*.png"))
                == sorted(p.name for p in (tmp_path / f"solo{i}" / "figures").glob("*.png"))
                != []
            )


@pytest.mark.slow
@pytest.mark.parametrize("model", ["wavenet", "transformer"])
def test_each_member_drops_at_its_own_rate(compose_train, small_names, tmp_path, model):
    """Members alike but for model.dropout: the 0.0 member is exactly its solo run (no rate of another member
    leaked into it), the 0.3 member, listed first, is not (its own rate was applied, not the other's)."""
    common = [
        f"model={model}",
        f"data.path={small_names}",
        "trainer.max_steps=30",
        *QUIET,
        *TINY_MODELS[model],
        "seed=1",
        "optimizer=sgd",
        "optimizer.lr=0.05",
    ]
    rates = ["model.dropout=0.3", "model.dropout=0.0"]
    train_population([compose_member(compose_train, tmp_path, f"member{i}", *common, r) for i, r in enumerate(rates)])
    train(compose_member(compose_train, tmp_path, "solo", *common, rates[1]))
    solo, dropped, plain = weights(tmp_path / "solo"), weights(tmp_path / "member0"), weights(tmp_path / "member1")
    assert all(torch.allclose(plain[k], solo[k], atol=1e-4) for k in solo)
    assert not all(torch.allclose(dropped[k], solo[k], atol=1e-2) for k in solo)


@pytest.mark.slow
def test_a_diverging_member_stops_alone_and_the_others_are_plain_runs(compose_train, small_names, tmp_path):
    common = [
        "model=mlp",
        f"data.path={small_names}",
        "trainer.max_steps=40",
        "trainer.val_check_interval=20",
        "trainer.log_every_n_steps=10",
        "callbacks=default",
        "~callbacks.diagnostics",
        "~callbacks.sample_text",
    ]
    # SGD on these models does not overflow at any lr the schema allows; a weight decay of 1e30 overflows at once.
    cfgs = [
        compose_member(compose_train, tmp_path, name, *common, lr)
        for name, lr in (
            ("ok0", "optimizer.lr=0.1"),
            ("bad", "optimizer.weight_decay=1e30"),
            ("ok1", "optimizer.lr=0.05"),
        )
    ]
    results = train_population(cfgs)
    assert isinstance(results[1], TrainingDiverged) and "at step" in str(results[1])
    assert not (tmp_path / "bad" / "summary.json").exists()
    for name, result in (("ok0", results[0]), ("ok1", results[2])):
        run = tmp_path / name
        assert json.loads((run / "summary.json").read_text())["population_size"] == 3
        assert math.isfinite(result["val_loss"]) and result["steps"] == 40
        assert result["steps_per_second"] == pytest.approx(40 / result["train_seconds"])
        assert "final loss (nats)" in (run / "train.log").read_text()
        best = list((run / "checkpoints").glob("best_step*.ckpt"))
        assert len(best) == 1
        scalars = read_scalars(run / "tensorboard")
        assert len(scalars["train/loss"]) == 4 and len(scalars["val/loss"]) == 2 and "lr" in scalars
        assert scalars["val/loss"][-1] == pytest.approx(result["val_loss"], rel=1e-5)
    # The job's checkpoints are plain single-model checkpoints, holding this member's weights only (its tensors are
    # rows of the population's: a view would be saved with every member's), and the entry points take them as they are.
    for saved in [tmp_path / "ok1" / "checkpoints" / "last.ckpt", *(tmp_path / "ok0" / "checkpoints").glob("best*")]:
        for name, tensor in read_checkpoint(saved)["state_dict"].items():
            assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size(), name
    evaluated = run_script(
        "eval.py", f"ckpt_path={tmp_path / 'ok1' / 'checkpoints' / 'last.ckpt'}", f"data.path={small_names}"
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"{results[2]['val_loss']:.4f}" in evaluated.stdout
    sampled = run_script(
        "sample.py", f"ckpt_path={next((tmp_path / 'ok0' / 'checkpoints').glob('best_step*.ckpt'))}", "num_samples=3"
    )
    assert sampled.returncode == 0, sampled.stderr


def test_batchnorm_members_keep_their_own_running_statistics(compose_train, small_names, tmp_path):
    common = ["model=mlp_bn", f"data.path={small_names}", "trainer.max_steps=20", *QUIET, *TINY_MODELS["mlp_bn"]]
    cfgs = [compose_member(compose_train, tmp_path, f"m{i}", *common, f"seed={i}", f"data.seed={i}") for i in range(2)]
    train_population(cfgs)
    a, b = weights(tmp_path / "m0"), weights(tmp_path / "m1")
    assert not torch.equal(a["layers.1.running_mean"], b["layers.1.running_mean"])
    assert a["layers.1.num_batches_tracked"] == 20


def test_members_read_one_copy_of_the_corpus(compose_train, small_names, tmp_path):
    """A population holds the encoded corpus once: members share the split tensors, each with its own data seed
    (its own minibatch order), and every data module reports what a solo run's would."""
    common = ["model=mlp", f"data.path={small_names}", "trainer.max_steps=10", *QUIET, *TINY_MODELS["mlp"]]
    cfgs = [compose_member(compose_train, tmp_path, f"m{i}", *common, f"data.seed={i % 2}") for i in range(3)]
    members, shared = [Member(cfg, Path(cfg.paths.output_dir)) for cfg in cfgs], {}
    try:
        for member in members:
            member.out_dir.mkdir(parents=True)
            member.set_up(torch.device("cpu"), shared)
    finally:
        for member in members:
            member.release()
    first = members[0].datamodule
    for member, seed in zip(members, (0, 1, 0)):
        data = member.datamodule
        assert data.seed == seed and data.vocab is first.vocab and data.fingerprint == first.fingerprint
        assert all(data.splits[name].tokens is first.splits[name].tokens for name in first.splits)
    solo = compose_member(compose_train, tmp_path, "solo", *common)
    assert train(solo)["train_examples"] == first.num_examples("train")


def test_members_stop_early_as_lightnings_early_stopping_stops_their_solo_runs(
    compose_train, small_names, tmp_path, caplog
):
    """callbacks=[...,early_stopping] (Lightning's EarlyStopping: patience 3, min_delta 0.001): the lr=1e-9 member,
    whose val loss still falls by ~1e-9 a validation, stops alone, at the step its solo run stops at; the learning
    member trains on. A member reads the callback's own patience and min_delta."""
    caplog.set_level(logging.INFO, logger="makemore_lab.population.run")
    common = [
        "model=mlp",
        f"data.path={small_names}",
        "trainer.max_steps=80",
        "trainer.val_check_interval=10",
        "callbacks=[none,early_stopping]",
        *TINY_MODELS["mlp"],
    ]
    stuck = ["optimizer.lr=1e-9"]
    learning = ["optimizer.lr=0.1", "callbacks.early_stopping.min_delta=0"]
    results = train_population(
        [
            compose_member(compose_train, tmp_path, "stuck", *common, *stuck),
            compose_member(compose_train, tmp_path, "learning", *common, *learning),
        ]
    )
    solo = train(compose_member(compose_train, tmp_path, "solo", *common, *stuck))
    assert results[0]["steps"] == solo["steps"] == 40  # its first validation, then three without 0.001 better
    assert results[0]["val_loss"] == pytest.approx(solo["val_loss"], abs=1e-6)
    assert results[1]["steps"] == 80
    # The stopped member's rows are dropped: the learning one goes on alone from step 40 (Population.repack_due),
    # as its solo run would, and still reports the population it trained in
    assert "1 members ended; the 1 still training go on as a population of 1 from step 40" in caplog.text
    alone = train(compose_member(compose_train, tmp_path, "solo_learning", *common, *learning))
    assert results[1]["val_loss"] == pytest.approx(alone["val_loss"], abs=1e-5)
    assert results[1]["population_size"] == 2 and "resumed_from_step" not in results[1]
    patient = train_population(
        [compose_member(compose_train, tmp_path, "patient", *common, *stuck, "callbacks.early_stopping.patience=5")]
    )
    assert patient[0]["steps"] == 60


@pytest.mark.slow
def test_memory_budget_splits_or_refuses(compose_train, small_names, tmp_path):
    common = ["model=mlp", f"data.path={small_names}", "trainer.max_steps=10", *QUIET, *TINY_MODELS["mlp"]]
    refused = train_population(
        [compose_member(compose_train, tmp_path, f"r{i}", *common, "+population_max_memory_gb=1e-9") for i in range(2)]
    )
    assert all(isinstance(r, UserError) and "population memory budget" in str(r) for r in refused)
    # A budget for two and a half members (the refusal says what one needs): four train as two populations of two.
    need = float(re.search(r"needs about ([0-9.e-]+) GB", str(refused[0])).group(1))
    split = train_population(
        [
            compose_member(compose_train, tmp_path, f"s{i}", *common, f"+population_max_memory_gb={2.5 * need}")
            for i in range(4)
        ]
    )
    assert [r["population_size"] for r in split] == [2, 2, 2, 2]


@pytest.mark.slow
def test_refusals_are_one_line(compose_train):
    assert population_refusal(compose_train("model=mlp")) is None
    assert "DDP" in population_refusal(compose_train("trainer=ddp"))
    assert population_refusal(compose_train("trainer.precision=bf16-mixed", "trainer.max_time=00:00:01:00")) is None
    assert "best checkpoint by val/loss only" in population_refusal(
        compose_train("callbacks.model_checkpoint.monitor=train/loss")
    )
    assert population_refusal(compose_train("callbacks=[default,early_stopping]")) is None
    for other in (
        "callbacks.early_stopping.monitor=train/loss",
        "callbacks.early_stopping.mode=max",
        "+callbacks.early_stopping.stopping_threshold=1.5",
    ):
        assert "stops early on val/loss (mode min, patience, min_delta) only" in population_refusal(
            compose_train("callbacks=[default,early_stopping]", other)
        ), other


POPULATION = ["model=mlp", "model.n_hidden=16", "schedule=constant", "trainer.val_check_interval=50", *QUIET]
# The interrupted population runs as a user's would: in its own process, stopped by a real SIGTERM.
POPULATION_SCRIPT = """
import sys
from hydra import compose, initialize_config_dir
from makemore_lab.configs import CONFIG_DIR
from makemore_lab.errors import exit_on_user_error
from makemore_lab.population import train_population
out, data, *overrides = sys.argv[1:]
with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
    cfgs = [compose("train", overrides=[f"paths.output_dir={out}/{i}", f"data.path={data}", "threads=1",
            "trainer.accelerator=cpu", "trainer.max_steps=1000000", f"optimizer.lr={0.05 * (i + 1)}", f"seed={i}",
            *overrides]) for i in range(2)]
exit_on_user_error(train_population)(cfgs)
"""


def population_cfgs(compose_train, out: Path, data: Path, steps: int, *extra: str):
    return [
        compose_train(
            f"paths.output_dir={out / str(i)}",
            f"data.path={data}",
            f"trainer.max_steps={steps}",
            f"optimizer.lr={0.05 * (i + 1)}",
            f"seed={i}",
            *POPULATION,
            *extra,
        )
        for i in range(2)
    ]


@pytest.mark.slow
def test_sigterm_saves_every_member_and_a_resumed_population_continues_exactly(compose_train, small_names, tmp_path):
    script = tmp_path / "population.py"
    script.write_text(POPULATION_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "run"), str(small_names), *POPULATION],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    log = tmp_path / "run" / "1" / "train.log"
    deadline = time.monotonic() + 120
    while not (log.is_file() and "val loss" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    [line] = [line for line in stderr.splitlines() if "Resume with:" in line]
    assert " -m " in line and "ckpt_path" not in line  # the sweep again: it resumes each job its own way
    stopped = read_checkpoint(tmp_path / "run" / "0" / "checkpoints" / "last.ckpt")["global_step"]
    assert read_checkpoint(tmp_path / "run" / "1" / "checkpoints" / "last.ckpt")["global_step"] == stopped
    # Resumed to `end` (the schedule is constant, so max_steps does not change the lr) against a straight run.
    end = stopped + 30
    resumed = train_population(
        population_cfgs(
            compose_train, tmp_path / "run", small_names, end, "ckpt_path=${paths.output_dir}/checkpoints/last.ckpt"
        )
    )
    train_population(population_cfgs(compose_train, tmp_path / "straight", small_names, end))
    for i in range(2):
        assert resumed[i]["steps"] == end and resumed[i]["resumed_from_step"] == stopped
        ours, theirs = weights(tmp_path / "run" / str(i)), weights(tmp_path / "straight" / str(i))
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["bigram", "bow", "gru", "lstm"])
def test_the_other_models_train_in_a_population(compose_train, small_names, tmp_path, model):
    """The exactness test covers five models; the other four run through the same code (bigram folded, the rest
    under vmap)."""
    tiny = [] if model == "bigram" else ["model.n_hidden=8", "model.n_embd=8"]
    cfgs = [
        compose_member(
            compose_train, tmp_path, str(i), f"model={model}", f"data.path={small_names}", f"seed={i}", *QUIET, *tiny
        )
        for i in range(2)
    ]
    results = train_population(cfgs)
    assert all(r["steps"] == 20 and math.isfinite(r["val_loss"]) for r in results)
    assert results[0]["val_loss"] != results[1]["val_loss"]


def test_the_folded_embedding_gives_each_member_its_own_rows_and_gradients():
    """Member i's indices read and write only its own table (MembersEmbedding's index_add_ backward), with the
    gradients torch's embedding backward gives each member alone: the same sums."""
    from makemore_lab.population.folded import MembersInBatch

    generator = torch.Generator().manual_seed(0)
    tables = torch.randn(3, 27, 5, generator=generator, requires_grad=True)  # 3 members' (V, D) tables
    idx = torch.randint(0, 27, (3 * 4, 6), generator=generator)  # 4 rows of 6 positions per member, repeats included
    upstream = torch.randn(3 * 4, 6, 5, generator=generator)
    with MembersInBatch(3):
        out = torch.nn.functional.embedding(idx, tables)
    (out * upstream).sum().backward()
    for i in range(3):
        own = tables.detach()[i].clone().requires_grad_()
        alone = torch.nn.functional.embedding(idx[4 * i : 4 * i + 4], own)
        (alone * upstream[4 * i : 4 * i + 4]).sum().backward()
        assert torch.equal(out[4 * i : 4 * i + 4], alone)
        assert torch.allclose(tables.grad[i], own.grad, rtol=0, atol=1e-6)
