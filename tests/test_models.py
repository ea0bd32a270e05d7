"""The architectures as plain nn.Modules, no Hydra: shapes, sizes, the lecture's initial-loss sanity check."""

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from torch.nn import functional as F

from conftest import CONFIG_DIR, ROOT
from makemore_lab.data import Vocabulary, make_examples, make_item_examples
from makemore_lab.errors import UserError
from makemore_lab.losses import training_loss
from makemore_lab.models.bigram import Bigram
from makemore_lab.models.bow import BagOfWords
from makemore_lab.models.mlp import MLP
from makemore_lab.models.mlp_bn import DeepMLP
from makemore_lab.models.rnn import RecurrentLM
from makemore_lab.models.transformer import Transformer
from makemore_lab.models.wavenet import WaveNet
from makemore_lab.sampling import generate

V = 27
BUILDERS = {
    "bigram": lambda init: Bigram(V, 1, init=init),
    "mlp": lambda init: MLP(V, 3, init=init),
    "mlp_batchnorm": lambda init: MLP(V, 3, batchnorm=True, init=init),
    "mlp_bn": lambda init: DeepMLP(V, 3, init=init),
    "wavenet": lambda init: WaveNet(V, 8, init=init),
    "rnn": lambda init: RecurrentLM(V, 16, "rnn", init=init),
    "gru": lambda init: RecurrentLM(V, 16, "gru", init=init),
    "lstm": lambda init: RecurrentLM(V, 16, "lstm", init=init),
    "transformer": lambda init: Transformer(V, 16, init=init),
    "bow": lambda init: BagOfWords(V, 16, init=init),
}


def n_params(net):
    return sum(p.numel() for p in net.parameters())


def test_lecture_parameter_counts():
    assert n_params(MLP(V, 3)) == 11_897
    assert n_params(MLP(V, 3, batchnorm=True)) == 12_097
    assert n_params(WaveNet(V, 8)) == 76_579
    assert n_params(Bigram(V, 1)) == 729


@pytest.mark.parametrize("name", BUILDERS)
def test_logits_shape_and_kaiming_initial_loss_near_ln_vocab(name):
    torch.manual_seed(0)
    net = BUILDERS[name]("kaiming")
    x = torch.randint(0, V, (256, net.block_size))
    logits = net(x)
    assert logits.shape == (256, V)
    loss = F.cross_entropy(logits, torch.randint(0, V, (256,))).item()
    assert abs(loss - math.log(V)) < 0.1 * math.log(V), f"{name} starts at {loss:.3f}, far from ln 27"


@pytest.mark.parametrize("name", ["mlp", "mlp_bn", "wavenet"])
def test_naive_init_starts_confidently_wrong(name):
    torch.manual_seed(0)
    net = BUILDERS[name]("naive")
    loss = F.cross_entropy(net(torch.randint(0, V, (256, net.block_size))), torch.randint(0, V, (256,))).item()
    assert loss > 2 * math.log(V)


def test_torch_init_leaves_pytorch_defaults():
    torch.manual_seed(0)
    net = MLP(V, 3, init="torch")
    torch.manual_seed(0)  # the same layers in the same order draw the same default weights
    wte, hidden, head = torch.nn.Embedding(V, 10), torch.nn.Linear(30, 200), torch.nn.Linear(200, V)
    assert torch.equal(net.wte.weight, wte.weight)
    assert torch.equal(net.hidden.weight, hidden.weight) and torch.equal(net.lm_head.bias, head.bias)


def test_bad_model_options_are_user_errors():
    with pytest.raises(UserError, match="power of two"):
        WaveNet(V, 6)
    with pytest.raises(UserError, match="model.init"):
        MLP(V, 3, init="xavier")
    with pytest.raises(UserError, match="model.cell"):
        RecurrentLM(V, 4, "tcn")


@pytest.mark.parametrize("name", ["mlp", "transformer", "lstm"])
def test_generate_is_seeded_and_ends_items(name):
    net = BUILDERS[name]("kaiming")
    vocab = Vocabulary(tuple(".abcdefghijklmnopqrstuvwxyz"))
    a = generate(net, vocab, 8, net.block_size, torch.Generator().manual_seed(1), max_length=30)
    b = generate(net, vocab, 8, net.block_size, torch.Generator().manual_seed(1), max_length=30)
    assert a == b and len(a) == 8
    assert all("." not in item and len(item) <= 30 for item in a)


def test_generate_top_k_1_is_greedy():
    torch.manual_seed(0)
    net = MLP(V, 3)
    vocab = Vocabulary(tuple(".abcdefghijklmnopqrstuvwxyz"))
    items = generate(net, vocab, 5, 3, torch.Generator().manual_seed(3), top_k=1, max_length=20)
    assert len(set(items)) == 1  # argmax sampling: every item identical


SEQUENCE_MODELS = ["rnn", "gru", "lstm", "transformer"]
ITEMS = ["emma", "olivia", "x", "zachariah", "ava"]


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_sequence_models_ignore_left_padding(name):
    """Every position of an item's whole-item window predicts exactly what that prefix's own window predicts."""
    torch.manual_seed(0)
    net = BUILDERS[name]("kaiming").eval()
    vocab = Vocabulary.from_items(ITEMS)
    windows_x, windows_y = make_examples(ITEMS, vocab, net.block_size)
    items_x, _ = make_item_examples(ITEMS, vocab, net.block_size)
    every_position = net(items_x, all_positions=True)  # (items, T, V)
    assert every_position.shape == (len(ITEMS), net.block_size, V)
    # An item of L characters has L + 1 windows; the j-th ends at position T - 1 - L + j of its whole-item window.
    as_windows = torch.cat([every_position[k, net.block_size - 1 - len(item) :] for k, item in enumerate(ITEMS)])
    assert len(as_windows) == len(windows_y)
    torch.testing.assert_close(as_windows, net(windows_x), rtol=0, atol=1e-5)
    # ...and the outputs do depend on the context (the check above could not pass with a constant output).
    assert (net(windows_x).std(dim=0) > 1e-3).any()


@pytest.mark.parametrize("name", ["transformer", "gru"])
def test_whole_item_loss_is_the_mean_over_the_items_windows(name):
    """The all-positions training loss on whole items == the per-window loss over the same items' characters."""
    torch.manual_seed(0)
    net = BUILDERS[name]("kaiming")
    vocab = Vocabulary.from_items(ITEMS)
    windows_x, windows_y = make_examples(ITEMS, vocab, net.block_size)
    items_x, items_y = make_item_examples(ITEMS, vocab, net.block_size)
    whole_items = training_loss(net, items_x, items_y, all_positions=True)
    torch.testing.assert_close(whole_items, F.cross_entropy(net(windows_x), windows_y), rtol=0, atol=1e-5)


@pytest.mark.parametrize("build", [lambda: Transformer(V, 16, dropout=0.5), lambda: WaveNet(V, 8, dropout=0.5)])
def test_dropout_acts_in_training_only(build):
    torch.manual_seed(0)
    net = build()
    x = torch.randint(1, V, (64, net.block_size))
    assert not torch.equal(net(x), net(x))  # training: a fresh mask each call
    net.eval()
    assert torch.equal(net(x), net(x))
    assert n_params(net) == n_params(type(net)(V, net.block_size))  # dropout adds no parameters


def readme_model_options() -> dict[str, tuple[str, str, str]]:
    """docs/training.md's "What choosing a model also sets" table: model -> (block_size, data.train_on, optimizer)."""
    text = (
        (ROOT / "docs" / "training.md").read_text().split("## What choosing a model also sets", 1)[1].split("\n#", 1)[0]
    )
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    cells = [[c.strip().strip("`") for c in row.strip("|").split("|")] for row in rows]
    return {c[0]: (c[1].split(" ")[0], c[2], c[3]) for c in cells}


@pytest.mark.parametrize("path", sorted(Path(CONFIG_DIR, "model").glob("*.yaml")), ids=lambda p: p.stem)
def test_a_model_option_sets_outside_model_only_what_the_readme_table_says(path):
    raw = OmegaConf.load(path)
    assert set(raw) <= {"defaults", "model_name", "block_size", "data", "model"}, set(raw)
    assert set(raw.get("data", {})) <= {"train_on"}
    assert all(
        d in ("override /optimizer: adamw",) or OmegaConf.to_container(d) == {"override /optimizer": "adamw"}
        for d in raw.get("defaults", [])
    )
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("train", overrides=[f"model={path.stem}", "paths.output_dir=."])
    GlobalHydra.instance().clear()
    optimizer = cfg.optimizer._target_.rsplit(".", 1)[-1].lower()
    block_size = "null" if cfg.block_size is None else str(cfg.block_size)
    assert readme_model_options()[path.stem] == (block_size, cfg.data.train_on, optimizer)
