"""The training-health diagnostics (lecture 3): their numbers are real, not just present.

Runs go through train(cfg) and are read back from the TensorBoard event files; the callbacks' mechanics (hooks,
every architecture, every optimizer) are tested on plain torch loops driving them, Lightning-style, without Hydra.
"""

import io
import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from PIL import Image
from torch import nn
from torch.nn import functional as F

from conftest import CONFIG_DIR, TINY, read_events
from makemore_lab.callbacks.sample_text import SampleText
from makemore_lab.diagnostics import Diagnostics
from makemore_lab.diagnostics.activations import NONLINEARITIES
from makemore_lab.diagnostics.health import HealthRules
from makemore_lab.errors import UserError
from makemore_lab.models.mlp import MLP
from makemore_lab.models.mlp_bn import DeepMLP
from makemore_lab.step_hooks import StepClock
from makemore_lab.train import train

MODELS = sorted(p.stem for p in Path(CONFIG_DIR, "model").glob("*.yaml"))
MLP_WEIGHTS = ["wte.weight", "hidden.weight", "lm_head.weight"]
SGD = ["optimizer=sgd", "schedule=constant"]  # no momentum, no weight decay, constant lr: update = lr * grad
FIGURES = ["activation_distribution", "gradient_distribution", "weight_gradient_distribution", "update_data_ratio"]
NO_EXTRAS = ["callbacks.diagnostics.figures=false", "~callbacks.sample_text", "~callbacks.model_checkpoint"]
RULES = {
    "initial_loss",
    "saturation",
    "activation_std",
    "gradient_scale",
    "update_data",
    "dead_units",
    "final_saturation",
}


def values(events: dict, tag: str) -> list[float]:
    return [v for _, v in events["scalars"][tag]]


def steps(events: dict, tag: str) -> list[int]:
    return [s for s, _ in events["scalars"][tag]]


def run(cfg) -> tuple[dict, dict]:
    """Train; return (summary, TensorBoard events)."""
    summary = train(cfg)
    return summary, read_events(Path(cfg.paths.output_dir) / "tensorboard")


# ---------------------------------------------------------------------------------------------- real runs


def test_a_run_writes_every_tag_family(compose_train, small_names, capsys):
    cfg = compose_train(
        f"data.path={small_names}", "callbacks.diagnostics.every_n_steps=5", "callbacks.sample_text.every_n_steps=10"
    )
    summary, events = run(cfg)
    out = Path(cfg.paths.output_dir)

    measured = [0, 5, 10, 15, 19]  # every 5 steps, and the last
    for family in ("activation_mean", "activation_std", "saturation", "dead", "gradient_std"):
        assert steps(events, f"{family}/act") == measured, family
    for family in ("grad_data", "update_data"):
        for weight in MLP_WEIGHTS:
            assert steps(events, f"{family}/{weight}") == measured
    for family in ("activation", "gradient"):
        histograms = events["histograms"][f"{family}/act"]
        assert [s for s, _ in histograms] == measured
        assert all(h.num == 32 * 200 for _, h in histograms)  # a batch of 32 x 200 tanh units
    saturation_maps = events["images"]["saturation_map/act"]
    assert [s for s, _ in saturation_maps] == [0, 19]  # the first of every 10 measurements, and the last
    assert all((image.height, image.width) == (32, 200) for _, image in saturation_maps)  # batch x units
    pixels = np.asarray(Image.open(io.BytesIO(saturation_maps[0][1].encoded_image_string)).convert("L"))
    assert set(np.unique(pixels)) <= {0, 255}
    white = (pixels == 255).mean()  # |t| > 0.99: some of the outputs beyond 0.97
    assert 0 < white <= values(events, "saturation/act")[0]

    assert values(events, "initial_loss/measured") == [pytest.approx(summary["initial_loss"])]
    assert values(events, "initial_loss/expected") == [pytest.approx(math.log(27))]
    assert [s for s, _ in events["text"]["samples"]] == [10, 20]
    assert len(events["text"]["samples"][0][1].splitlines()) == 10

    for name in FIGURES:
        assert [s for s, _ in events["images"][f"figures/{name}"]] == [20]
        png = (out / "figures" / f"{name}.png").read_bytes()
        assert len(png) > 10_000
        image = events["images"][f"figures/{name}"][0][1]  # the file's PNG, not encoded a second time
        assert image.encoded_image_string == png
        assert (image.height, image.width) == (450, 800)  # 8 x 4.5 inches at 100 dpi: readable in a TensorBoard card
        assert Image.open(io.BytesIO(png)).mode == "RGB"
        idat = png.index(b"IDAT") + 4
        assert png[idat : idat + 2] == b"\x78\x01"  # zlib's fastest level (figures.PNG_COMPRESS_LEVEL)

    health = json.loads((out / "summary.json").read_text())["health"]
    assert health["rules"].keys() == RULES
    assert health["rules"]["initial_loss"]["ok"] is True and health["measured_every_n_steps"] == 5
    assert health["rules"]["update_data"]["values"].keys() == set(MLP_WEIGHTS)
    assert [s for s, _ in events["text"]["health"]] == [20]
    printed = capsys.readouterr().out
    assert "training health" in printed and "verdict:" in printed
    assert "why: an untrained network should be equally unsure" in printed  # the lecture's reasoning, one line
    assert "[TensorBoard: initial_loss/measured]" in printed  # and where to look


def test_figures_draw_their_text_unhinted_and_leave_the_users_matplotlib_settings(tmp_path):
    """figures.FAST_TEXT holds while the figures are drawn (glyphs rendered with it differ from the default's) and
    only then: a user's own rcParams (a notebook's style) are as they were after save_figures."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from makemore_lab.diagnostics import figures

    def text_pixels():
        fig = Figure(figsize=(2, 1), dpi=100)
        fig.text(0.1, 0.4, "activation 0.97")
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        return np.asarray(canvas.buffer_rgba()).copy()

    with matplotlib.rc_context({"text.hinting": "force_autohint", "text.hinting_factor": 8}):
        hinted = text_pixels()
        with matplotlib.rc_context(figures.FAST_TEXT):
            assert not np.array_equal(text_pixels(), hinted)  # the setting changes what is drawn
        seen = {}
        original = figures.draw

        def spy(*args, **kwargs):
            seen.update({k: matplotlib.rcParams[k] for k in figures.FAST_TEXT})
            return original(*args, **kwargs)

        diagnostics = SimpleNamespace(last={"step": 3, "layers": {}, "weights": {}}, history=[])
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(figures, "draw", spy)
            paths = figures.save_figures(diagnostics, tmp_path, None, 3)
        assert seen == figures.FAST_TEXT and len(paths) == 4
        assert (matplotlib.rcParams["text.hinting"], matplotlib.rcParams["text.hinting_factor"]) == (
            "force_autohint",
            8,
        )


@pytest.fixture(scope="module")
def sgd_runs(small_names, tmp_path_factory) -> dict[float, tuple[dict, dict]]:
    """The lecture MLP (init=kaiming), same seed and minibatches, plain SGD at lr 0.1 and 0.2, measured every 5
    steps: lr -> (summary, events)."""
    runs = {}
    for lr in (0.1, 0.2):
        out = tmp_path_factory.mktemp(f"sgd_{lr}")
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            cfg = compose(
                "train",
                overrides=[
                    *TINY,
                    f"paths.output_dir={out}",
                    f"data.path={small_names}",
                    *SGD,
                    f"optimizer.lr={lr}",
                    "callbacks.diagnostics.every_n_steps=5",
                    *NO_EXTRAS,
                ],
            )
        runs[lr] = run(cfg)
    GlobalHydra.instance().clear()
    return runs


def test_an_encoded_image_is_kept_with_the_fields_add_image_writes():
    """A figure's PNG goes to TensorBoard as it is: the same height, width and channels as encoding its pixels."""
    from makemore_lab.tensorboard_events import SummaryBatch

    rgb = np.random.default_rng(0).integers(0, 256, (40, 100, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="png")
    encoded, plain = SummaryBatch(), SummaryBatch()
    encoded.image("figure", rgb, "HWC", png=png.getvalue())
    plain.image("figure", rgb, "HWC")
    (kept,), (made,) = encoded.values, plain.values
    assert kept.tag == made.tag == "figure"
    assert (
        (kept.image.height, kept.image.width, kept.image.colorspace)
        == (made.image.height, made.image.width, made.image.colorspace)
        == (40, 100, 3)
    )
    assert kept.image.encoded_image_string == png.getvalue()
    decoded = lambda image: np.asarray(Image.open(io.BytesIO(image.encoded_image_string)))
    assert (decoded(kept.image) == rgb).all() and (decoded(made.image) == rgb).all()


def test_doubling_sgd_lr_adds_log10_2_to_update_data_and_leaves_grad_data(sgd_runs):
    slow, fast = sgd_runs[0.1][1], sgd_runs[0.2][1]
    for weight in MLP_WEIGHTS:  # the first measured step: same weights, same minibatch, twice the step
        assert values(fast, f"update_data/{weight}")[0] == pytest.approx(
            values(slow, f"update_data/{weight}")[0] + math.log10(2), abs=1e-3
        )
        assert values(fast, f"grad_data/{weight}")[0] == pytest.approx(values(slow, f"grad_data/{weight}")[0], rel=1e-6)


def test_sgd_update_is_lr_times_grad(sgd_runs):
    for lr, (_, events) in sgd_runs.items():
        for weight in MLP_WEIGHTS:
            expected = [math.log10(lr * g) for g in values(events, f"grad_data/{weight}")]
            assert values(events, f"update_data/{weight}") == pytest.approx(expected, abs=1e-3)


def test_adam_update_is_not_lr_times_grad(compose_train, small_names):
    _, events = run(
        compose_train(
            f"data.path={small_names}",
            "optimizer=adam",
            "schedule=constant",
            "callbacks.diagnostics.every_n_steps=5",
            *NO_EXTRAS,
        )
    )
    for weight in MLP_WEIGHTS:
        naive = [math.log10(1e-3 * g) for g in values(events, f"grad_data/{weight}")]
        measured = values(events, f"update_data/{weight}")
        # Adam's step is about lr per element, whatever the gradient's size: far from lr * grad.
        assert max(abs(m - n) for m, n in zip(measured, naive)) > 0.3, weight


def test_naive_init_saturates_tanh_and_starts_confidently_wrong_kaiming_does_not(
    compose_train, small_names, caplog, sgd_runs
):
    with caplog.at_level(logging.WARNING, logger="makemore_lab"):
        naive, naive_events = run(
            compose_train(
                f"data.path={small_names}",
                "model=mlp",
                "model.init=naive",
                *SGD,
                "callbacks.diagnostics.every_n_steps=5",
                *NO_EXTRAS,
            )
        )
    kaiming, kaiming_events = sgd_runs[0.1]  # the same run with the default init
    # Step 0: most tanh outputs beyond 0.97, and a loss far above ln 27.
    assert values(naive_events, "saturation/act")[0] > 0.5
    assert values(naive_events, "initial_loss/measured")[0] > 3 * math.log(27)
    assert "confidently wrong" in caplog.text
    rule = naive["health"]["rules"]["initial_loss"]
    assert rule["ok"] is False and "confidently wrong" in rule["message"]

    assert values(kaiming_events, "saturation/act")[0] < 0.3
    assert values(kaiming_events, "initial_loss/measured")[0] == pytest.approx(math.log(27), rel=0.1)
    assert kaiming["health"]["rules"]["initial_loss"]["ok"] is True


def test_measuring_every_step_does_not_change_training(compose_train, small_names, tmp_path):
    measured = train(
        compose_train(
            f"data.path={small_names}",
            "callbacks.diagnostics.every_n_steps=1",
            "callbacks.sample_text.every_n_steps=10",
            "callbacks.diagnostics.figures=false",
            f"paths.output_dir={tmp_path}/measured",
        )
    )
    plain_cfg = compose_train(f"data.path={small_names}", "callbacks=none", f"paths.output_dir={tmp_path}/plain")
    plain, events = run(plain_cfg)
    assert measured["val_loss"] == plain["val_loss"] and measured["samples"] == plain["samples"]
    assert "health" not in plain and not events["histograms"] and not events["images"] and not events["text"]
    assert not any(tag.startswith(("saturation", "update_data", "initial_loss")) for tag in events["scalars"])


def test_without_diagnostics_nothing_is_measured_reported_or_drawn(compose_train, small_names):
    cfg = compose_train(f"data.path={small_names}", "~callbacks.diagnostics", "~callbacks.sample_text")
    summary, events = run(cfg)
    assert "health" not in summary
    assert not any(tag.startswith(("saturation", "update_data", "initial_loss")) for tag in events["scalars"])
    assert not events["text"] and not events["images"]
    assert not (Path(cfg.paths.output_dir) / "figures").exists()


def test_the_health_report_and_figures_are_options_of_the_one_callback(compose_train, small_names, capsys):
    cfg = compose_train(
        f"data.path={small_names}",
        "callbacks.diagnostics.health_report=false",
        "callbacks.diagnostics.figures=false",
        "callbacks.diagnostics.initial_loss_check=false",
        "callbacks.diagnostics.every_n_steps=10",
        "~callbacks.sample_text",
    )
    summary, events = run(cfg)
    assert "health" not in summary and "training health" not in capsys.readouterr().out
    assert not (Path(cfg.paths.output_dir) / "figures").exists()
    assert not any(tag.startswith("initial_loss") for tag in events["scalars"])
    assert steps(events, "saturation/act") == [0, 10, 19]  # still measured
    from makemore_lab import diagnostics

    assert diagnostics.__all__ == ["Diagnostics"]


def test_thresholds_are_settings(compose_train, small_names):
    cfg = compose_train(
        f"data.path={small_names}",
        "callbacks.diagnostics.thresholds.max_first_layer_saturation=0.01",
        "callbacks.diagnostics.figures=false",
        "~callbacks.sample_text",
    )
    summary = train(cfg)
    assert summary["health"]["rules"]["saturation"]["ok"] is False and summary["health"]["ok"] is False
    assert "limit 1%" in summary["health"]["rules"]["saturation"]["message"]


def test_a_bad_cadence_in_the_config_is_a_user_error(compose_train, small_names):
    with pytest.raises(UserError, match="callbacks.diagnostics.every_n_steps must be a positive integer, got 0"):
        train(compose_train(f"data.path={small_names}", "callbacks.diagnostics.every_n_steps=0"))


# ---------------------------------------------------------------------- the callbacks on plain torch loops


def fake_trainer(optimizer, max_steps: int = 100, global_zero: bool = True, callbacks=()):
    """What the diagnostics read from a Trainer, for driving them from a plain loop."""
    return SimpleNamespace(
        optimizers=[optimizer],
        global_step=0,
        max_steps=max_steps,
        is_global_zero=global_zero,
        loggers=[],
        callbacks=list(callbacks),
        datamodule=None,
        default_root_dir=".",
    )


def measuring_only(every_n_steps: int) -> Diagnostics:
    return Diagnostics(every_n_steps=every_n_steps, health_report=False, figures=False)


def train_steps(net: nn.Module, optimizer, n: int, batch: int = 32, seed: int = 0, before_step=None) -> None:
    generator = torch.Generator().manual_seed(seed)
    for step in range(n):
        x = torch.randint(0, 27, (batch, net.block_size), generator=generator)
        y = torch.randint(0, 27, (batch,), generator=generator)
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if before_step:
            before_step(step)
        optimizer.step()


@pytest.mark.parametrize("model", MODELS)
def test_every_architecture_has_every_nonlinearity_and_weight_measured(compose_train, model):
    torch.manual_seed(0)
    net = instantiate(compose_train(f"model={model}").model, vocab_size=27, block_size=8)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    diagnostics = measuring_only(1)
    trainer = fake_trainer(optimizer)
    diagnostics.on_train_start(trainer, SimpleNamespace(net=net))
    train_steps(net, optimizer, 2, batch=16)
    diagnostics.on_train_end(trainer, None)

    layers = {name for name, m in net.named_modules() if isinstance(m, NONLINEARITIES)}
    weights = {name for name, p in net.named_parameters() if p.dim() >= 2}
    last = diagnostics.history[-1]
    assert [r["step"] for r in diagnostics.history] == [0, 1]
    assert last["layers"].keys() == layers
    assert all(m["gradient_std"] > 0 for m in last["layers"].values())
    assert last["weights"].keys() == weights  # the RNN's all-zero start state too, once it has moved
    assert all(-8 < w["update_data"] < 1 for w in last["weights"].values())
    calls = {"rnn": {"cell.act": 8}, "gru": {"cell.act": 8, "cell.gate": 16}, "lstm": {"cell.gate": 24}}
    for layer, n in calls.get(model, {}).items():  # one call per time step (two or three for the gates)
        assert diagnostics.last["layers"][layer]["activations"].shape == (n * 16, 64)


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: torch.optim.SGD(params, lr=0.1),
        lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.1),
        lambda params: torch.optim.Adam(params, lr=1e-3),
        lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1),
    ],
    ids=["sgd", "sgd_momentum_decay", "adam", "adamw"],
)
def test_update_data_is_the_real_change_of_each_weight(make_optimizer):
    torch.manual_seed(0)
    net = MLP(27, 3)
    optimizer = make_optimizer(net.parameters())
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))
    diagnostics = measuring_only(2)
    trainer = fake_trainer(optimizer)
    diagnostics.on_train_start(trainer, SimpleNamespace(net=net))
    expected = {}

    def remember(step):  # the weights and lr * grad just before the step, to compare with after it
        expected[step] = {
            n: (p.detach().clone(), optimizer.param_groups[0]["lr"] * p.grad.clone())
            for n, p in net.named_parameters()
            if p.dim() >= 2
        }

    generator = torch.Generator().manual_seed(0)
    for step in range(5):
        x, y = torch.randint(0, 27, (32, 3), generator=generator), torch.randint(0, 27, (32,), generator=generator)
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        remember(step)
        optimizer.step()
        schedule.step()
        for name, p in net.named_parameters():
            if name in expected[step]:
                before, lr_grad = expected[step][name]
                expected[step][name] = ((p.detach() - before).std() / before.std(), lr_grad.std() / before.std())
    diagnostics.on_train_end(trainer, None)

    assert [r["step"] for r in diagnostics.history] == [0, 2, 4]
    plain_sgd = optimizer.defaults.get("momentum", None) == 0 and optimizer.defaults["weight_decay"] == 0
    for record in diagnostics.history:
        for name, w in record["weights"].items():
            real, lr_grad = expected[record["step"]][name]
            assert w["update_data"] == pytest.approx(math.log10(real), abs=1e-4)
            if plain_sgd:
                assert w["update_data"] == pytest.approx(math.log10(lr_grad), abs=1e-4)
    if not plain_sgd:  # from the second step on, momentum, decay and Adam's scaling all move it off lr * grad
        later = diagnostics.history[-1]
        assert any(
            abs(w["update_data"] - math.log10(expected[later["step"]][n][1])) > 0.05
            for n, w in later["weights"].items()
        )


def test_hooks_are_attached_only_around_measured_steps():
    net = MLP(27, 3)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    diagnostics = measuring_only(3)
    trainer = fake_trainer(optimizer, max_steps=8)
    diagnostics.on_train_start(trainer, SimpleNamespace(net=net))
    hooked = []
    train_steps(net, optimizer, 8, before_step=lambda step: hooked.append(bool(net.act._forward_hooks)))
    assert hooked == [s in (0, 3, 6, 7) for s in range(8)]  # every 3rd step, and the last (max_steps - 1)

    with torch.no_grad():  # a validation forward while attached is not measured
        diagnostics.activations.attach()
        net.eval()
        net(torch.zeros(4, 3, dtype=torch.long))
    assert all(not outputs for outputs in diagnostics.activations._outputs.values())
    diagnostics.on_train_end(trainer, None)
    assert not net.act._forward_hooks and not optimizer._optimizer_step_pre_hooks
    assert not optimizer._optimizer_step_post_hooks


def test_only_rank_zero_measures():
    net = MLP(27, 3)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    diagnostics = Diagnostics(every_n_steps=1)
    diagnostics.on_train_start(fake_trainer(optimizer, global_zero=False), SimpleNamespace(net=net))
    train_steps(net, optimizer, 2)
    assert not diagnostics.history and not optimizer._optimizer_step_post_hooks and not net.act._forward_hooks


def record(step: int, layers: dict, weights: dict, lr: float = 0.1) -> dict:
    tanh = {
        "kind": "Tanh",
        "mean": 0.0,
        "std": 0.65,
        "saturation": 0.05,
        "dead": 0.0,
        "dead_units": 0,
        "units": 100,
        "gradient_std": 1e-3,
    }
    return {
        "step": step,
        "lr": lr,
        "layers": {n: {**tanh, **m} for n, m in layers.items()},
        "weights": {n: {"grad_data": 1e-2, "update_data": u} for n, u in weights.items()},
    }


def test_health_report_names_the_layers_and_weights_that_break_a_rule(capsys):
    weights = {"layers.0.weight": -3.0, "layers.2.weight": -5.0, "lm_head.weight": -1.0}
    history = [
        record(
            0,
            {
                "layers.1": {"saturation": 0.2},
                "layers.3": {"saturation": 0.3, "std": 0.3, "gradient_std": 5e-3},
                "layers.5": {"std": 0.2, "dead_units": 3},
            },
            weights,
        ),
        *(record(s, {"layers.1": {}, "layers.3": {}, "layers.5": {"saturation": 0.4}}, weights) for s in (100, 200)),
    ]
    rules = HealthRules()
    verdict = rules.judge(history, 3.3, 27, output_weights={"lm_head.weight"})
    checked = verdict["rules"]
    assert checked.keys() == RULES and verdict["ok"] is False
    assert checked["initial_loss"]["ok"] is True
    # the first layer may start at 20% (it sees the embeddings), a deeper one not at 30%
    assert checked["saturation"]["ok"] is False and checked["saturation"]["values"] == {"layers.3": 0.3}
    assert checked["activation_std"]["ok"] is False and "0.65 -> 0.30 -> 0.20" in checked["activation_std"]["message"]
    assert checked["gradient_scale"]["ok"] is False and checked["gradient_scale"]["values"]["ratio"] == pytest.approx(5)
    # the output layer is the lecture's expected outlier: shown, not judged
    assert checked["update_data"]["ok"] is False and "layers.2.weight -5.00" in checked["update_data"]["message"]
    assert "lm_head.weight" not in checked["update_data"]["message"].split("outside")[0]
    assert "too slow" in checked["update_data"]["message"]
    assert checked["dead_units"]["ok"] is False and "layers.5 at step 0: 3 of 100" in checked["dead_units"]["message"]
    # what the trained network looks like is information
    assert checked["final_saturation"]["ok"] is None and checked["final_saturation"]["values"]["layers.5"] == 0.4
    text = rules.text(verdict)
    assert "[info] final_saturation" in text and "[FAIL] saturation" in text
    assert "5 of 6 rules broken (saturation, activation_std, gradient_scale, update_data, dead_units)" in text
    assert text.count("why: ") == len(RULES) and "[TensorBoard: update_data/<weight>]" in text


def test_dead_units_depend_on_the_kind_of_nonlinearity():
    """tanh always saturated and ReLU never active are dead; GELU at <= 0 still passes gradient."""

    def dead(kind):
        layer = {"kind": kind, "dead_units": 5}
        return HealthRules().judge([record(0, {"a": layer}, {})], 3.3, 27)["rules"]["dead_units"]

    assert dead("Tanh")["ok"] is False and dead("ReLU")["ok"] is False
    assert dead("GELU")["ok"] is True and "GELU not judged" in dead("GELU")["message"]


def test_depth_rules_judge_a_feed_forward_tanh_stack_only():
    """An LSTM's two tanh layers (called once per time step) are not layers in depth: not compared."""
    shrinking = {"a": {"std": 0.6}, "b": {"std": 0.3, "gradient_std": 1e-2}}
    stack = HealthRules().judge([record(0, shrinking, {})], 3.3, 27)["rules"]
    assert stack["activation_std"]["ok"] is False and stack["gradient_scale"]["ok"] is False
    cell = {n: {**m, "calls": 16} for n, m in shrinking.items()}
    recurrent = HealthRules().judge([record(0, cell, {})], 3.3, 27)["rules"]
    assert recurrent["activation_std"]["ok"] is None and recurrent["gradient_scale"]["ok"] is None


def test_update_data_is_judged_over_the_early_constant_lr_part_only():
    rules = HealthRules()
    early = [record(s, {}, {"w": -3.0}) for s in (0, 200, 400, 600, 800)]
    later = [record(s, {}, {"w": -6.0}, lr=0.01) for s in (1000, 1200, 1400)]  # after a step decay: not judged
    assert rules.judge(early + later, None, None)["rules"]["update_data"]["ok"] is True
    decayed = [
        record(0, {}, {"w": -3.0}),
        record(200, {}, {"w": -3.0}),
        *(record(s, {}, {"w": -6.0}, lr=0.01) for s in (400, 600, 800)),
    ]
    judged = rules.judge(decayed, None, None)["rules"]["update_data"]
    assert judged["ok"] is True and "the 2 measured steps 0-200" in judged["message"]
    warmup = [record(s, {}, {"w": -6.0}, lr=1e-4 * (s + 1)) for s in (0, 200, 400)]
    assert rules.judge(warmup, None, None)["rules"]["update_data"]["ok"] is None  # no constant-lr start


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda: Diagnostics(every_n_steps=0), "callbacks.diagnostics.every_n_steps"),
        (lambda: Diagnostics(every_n_steps=2.5), "callbacks.diagnostics.every_n_steps"),
        (lambda: Diagnostics(100, saturation_threshold=1.0), "callbacks.diagnostics.saturation_threshold"),
        (lambda: Diagnostics(100, saturation_threshold=0), "callbacks.diagnostics.saturation_threshold"),
        (lambda: Diagnostics(100, image_threshold=-0.5), "callbacks.diagnostics.image_threshold"),
        (lambda: Diagnostics(100, image_every=0), "callbacks.diagnostics.image_every"),
        (lambda: Diagnostics(100, figures="yes"), "callbacks.diagnostics.figures"),
        (lambda: Diagnostics(100, thresholds={"max_saturation": 5}), "callbacks.diagnostics.thresholds.max_saturation"),
        (
            lambda: Diagnostics(100, thresholds={"update_data_range": (-2, -4)}),
            "callbacks.diagnostics.thresholds.update_data_range",
        ),
        (
            lambda: Diagnostics(100, thresholds={"update_data_range": -3}),
            "callbacks.diagnostics.thresholds.update_data_range",
        ),
        (
            lambda: Diagnostics(100, thresholds={"initial_loss_tolerance": 1.5}),
            "callbacks.diagnostics.thresholds.initial_loss_tolerance",
        ),
        (lambda: Diagnostics(100, thresholds={"max_satruation": 0.1}), "callbacks.diagnostics.thresholds: unknown"),
        (lambda: SampleText(every_n_steps=-1), "callbacks.sample_text.every_n_steps"),
        (lambda: SampleText(every_n_steps=10, num_samples=0), "callbacks.sample_text.num_samples"),
        (lambda: DeepMLP(27, 3, gain=0), "model.gain"),
    ],
)
def test_bad_arguments_are_user_errors_naming_the_argument(make, argument):
    with pytest.raises(UserError, match=argument.replace(".", r"\.")):
        make()


def test_step_clock_calls_the_callback_only_at_due_steps():
    """The hooks count every step but call into the callback only where next_due says (the fast path's cost)."""
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    before, after = [], []
    clock = StepClock(
        before=lambda opt, step: before.append(step),
        after=lambda opt, step: after.append(step),
        next_due=lambda step: -(-step // 10) * 10,  # multiples of 10
    )
    clock.start(SimpleNamespace(global_step=3, optimizers=[optimizer]))  # a resumed run: counting starts at 3
    for _ in range(30):
        weight.grad = torch.ones(1)
        optimizer.step()
    clock.stop()
    assert before == after == [10, 20, 30]
    assert clock.step == 33


def test_step_clock_arms_before_each_due_steps_forward_in_a_loop_and_when_an_engine_counts():
    """arm(step) fires once before each due step's forward pass: right after the optimizer step before it, at start
    when the first step is due, and from count_to when a population counted the steps in between."""
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    events = []
    clock = StepClock(
        after=lambda opt, step: events.append(("after", step)),
        arm=lambda step: events.append(("arm", step)),
        next_due=lambda step: -(-step // 5) * 5,  # multiples of 5
    )
    clock.start(SimpleNamespace(global_step=0, optimizers=[optimizer]))
    for step in range(11):
        events.append(("forward", step))
        weight.grad = torch.ones(1)
        optimizer.step()
    assert [e for e in events if e[0] != "forward" or e[1] in (0, 5, 10)] == [
        ("arm", 0),
        ("forward", 0),
        ("after", 0),
        ("arm", 5),
        ("forward", 5),
        ("after", 5),
        ("arm", 10),
        ("forward", 10),
        ("after", 10),
    ]
    events.clear()
    clock.count_to(14)  # an engine stepped 11..13 without optimizer.step()
    clock.count_to(14)  # counting to where it already is arms nothing
    assert events == []
    clock.count_to(15)
    assert events == [("arm", 15)]
    optimizer.step()  # the due step, through the optimizer
    assert events == [("arm", 15), ("after", 15)]
    with pytest.raises(ValueError, match="due at 20"):
        clock.count_to(21)  # past a due step: the engine must step through the optimizer there
    clock.stop()


# ---------------------------------------------------------------------- lecture 3's deep network as config


def test_mlp_bn_options_build_the_lectures_networks(compose_train):
    def build(*overrides):
        torch.manual_seed(0)
        return instantiate(compose_train("model=mlp_bn", *overrides).model, vocab_size=27, block_size=3)

    with_bn = build()
    assert [type(m).__name__ for m in with_bn.layers[:3]] == ["Linear", "BatchNorm1d", "Tanh"]
    assert with_bn.layers[0].bias is None and isinstance(with_bn.output_norm, nn.Identity)
    plain = build("model.batchnorm=false", "model.gain=1.0")
    assert [type(m).__name__ for m in plain.layers] == ["Linear", "Tanh"] * 5 and plain.layers[0].bias is not None
    assert plain.layers[2].weight.std().item() == pytest.approx(1.0 / 10, rel=0.05)  # gain / sqrt(fan_in 100)
    assert build("model.batchnorm=false", "model.gain=3.0").layers[2].weight.std().item() == pytest.approx(
        0.3, rel=0.05
    )
    assert plain.lm_head.weight.std().item() == pytest.approx(0.1 / 10, rel=0.05)  # the output layer x 0.1

    lecture = instantiate(compose_train("experiment=lecture3_deep_mlp").model, vocab_size=27, block_size=3)
    assert isinstance(lecture.output_norm, nn.BatchNorm1d) and lecture.lm_head.bias is None
    assert torch.allclose(lecture.output_norm.weight, torch.full((27,), 0.1))  # gamma x 0.1
    assert lecture.lm_head.weight.std().item() == pytest.approx((5 / 3) / 10, rel=0.05)  # the gain, not x 0.1
    logits = lecture(torch.randint(0, 27, (32, 3)))
    assert logits.shape == (32, 27) and logits.std().item() == pytest.approx(0.1, rel=0.1)  # unsure at the start


# ------------------------------------------------------------------ the agreement table (docs/diagnostics.md)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "diagnostics.md"
AGREEMENT_STEPS, AGREEMENT_NAMES = 400, 3000  # the table is made with 1,000 steps on all names: same verdicts


def agreement_script():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "diagnostics_agreement.py"
    spec = importlib.util.spec_from_file_location("diagnostics_agreement", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documented_table() -> dict[str, str]:
    """setup -> verdict, from the agreement table in docs/diagnostics.md."""
    rows = {}
    for line in DOCS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`") and (cells[2] == "healthy" or cells[2].startswith("flagged")):
            rows[cells[0]] = cells[2]
    return rows


def broken_rules(verdict: str) -> set[str]:
    return set() if verdict == "healthy" else set(verdict.removeprefix("flagged: ").split(", "))


@pytest.fixture(scope="module")
def agreement(tmp_path_factory) -> dict[str, dict]:
    """Every setup of the table, trained in the lecture's setting: setup -> health."""
    script = agreement_script()
    names = tmp_path_factory.mktemp("agreement") / "names.txt"
    names.write_text("\n".join(Path(script.NAMES).read_text().split()[:AGREEMENT_NAMES]) + "\n")
    health = {}
    for i, (setup, overrides, _, _) in enumerate(script.SETUPS):
        out = tmp_path_factory.mktemp(f"agreement{i}")
        health[setup] = script.run(overrides, AGREEMENT_STEPS, names, out)["health"]
    GlobalHydra.instance().clear()
    return health


def test_the_documented_table_has_every_setup_and_its_lecture_judgement():
    script = agreement_script()
    table = documented_table()
    assert list(table) == [setup for setup, *_ in script.SETUPS]
    for setup, _, _, expected in script.SETUPS:
        assert expected <= broken_rules(table[setup]), setup  # the lecture's judgement is in the verdict
        assert bool(expected) == (table[setup] != "healthy"), setup


@pytest.mark.slow
@pytest.mark.parametrize("row", range(9))
def test_the_verdicts_agree_with_the_lecture(agreement, row):
    """Healthy where the lecture says good or fixed; where it finds a fault, the rules for that fault fail, and only
    rules that the documented table lists for that setup."""
    setup, _, judgement, expected = agreement_script().SETUPS[row]
    health = agreement[setup]
    broken = {name for name, rule in health["rules"].items() if rule["ok"] is False}
    assert expected <= broken <= broken_rules(documented_table()[setup]), (setup, judgement, health["rules"])
    assert health["ok"] is (not expected)
    assert health["rules"]["final_saturation"]["ok"] is None  # information, never a failure
