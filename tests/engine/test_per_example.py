"""Per-example gradients from one hooked backward against a loop of single-example backward passes."""

from __future__ import annotations

import pytest
import torch
from factories import make_tiny_bert, make_tiny_examples, make_tiny_logistic
from torch import nn

from fastif_core.engine.examples import TensorExamples
from fastif_core.engine.objective import Objective, binary_cross_entropy, classifier_objective, tensor_forward
from fastif_core.engine.per_example import per_example_dots, per_example_gradients, trainable_layers
from fastif_core.errors import ConfigError


def _loop(obj: Objective, train, rows: list[int]) -> torch.Tensor:
    """``(B, P)`` by one ``objective.grad`` per example (the L2 term included, as ``grad`` does)."""
    return torch.stack([obj.grad(train.collate([i])) for i in rows])


def _l2_gradient(obj: Objective) -> torch.Tensor:
    decayed = set(obj.decayed)
    return obj.flatten(
        {n: 2 * obj.weight_decay * p if n in decayed else torch.zeros_like(p) for n, p in obj.params.items()}
    )


def _max_row_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).norm(dim=1) / b.norm(dim=1)).max())


def _tiny_bert(freeze: str) -> Objective:
    model = make_tiny_bert(3, dtype=torch.float64)
    frozen = {"none": (), "embeddings+layer0": ("bert.embeddings", "bert.encoder.layer.0.")}[freeze]
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(frozen) if frozen else True)
    return classifier_objective(model, weight_decay=0.01)


@pytest.mark.parametrize("freeze", ["none", "embeddings+layer0"])
def test_tiny_bert_gradients_equal_single_example_loop_with_padding(freeze):
    obj = _tiny_bert(freeze)
    train = make_tiny_examples(10, seed=5)
    rows = [0, 3, 7, 3, 9]  # a duplicate; lengths differ, so most rows are padded
    lengths = train.lengths()[rows]
    assert lengths.min() < lengths.max()
    batch = train.collate(rows)
    assert (batch["attention_mask"] == 0).any()
    with_l2 = per_example_gradients(obj, batch, include_l2=True)
    assert with_l2.shape == (len(rows), obj.num_params) and with_l2.dtype == torch.float64
    assert _max_row_rel(with_l2, _loop(obj, train, rows)) < 1e-10
    data_only = per_example_gradients(obj, batch)
    torch.testing.assert_close(data_only + _l2_gradient(obj), with_l2, rtol=1e-12, atol=1e-14)


def test_logistic_model_gradients_equal_loop():
    model, train = make_tiny_logistic(seed=1, n=20)
    obj = Objective(model, forward=tensor_forward, loss=binary_cross_entropy, weight_decay=0.1)
    rows = list(range(0, 20, 3))
    got = per_example_gradients(obj, train.collate(rows), include_l2=True)
    assert _max_row_rel(got, _loop(obj, train, rows)) < 1e-12


def test_layer_norm_and_a_module_called_twice_equal_loop():
    torch.manual_seed(0)
    shared = nn.Linear(6, 6)
    model = nn.Sequential(
        nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh(), shared, nn.Tanh(), shared, nn.Linear(6, 3)
    )
    obj = Objective(model.double(), forward=tensor_forward, weight_decay=0.05)
    g = torch.Generator().manual_seed(0)
    train = TensorExamples(
        torch.randn(9, 4, generator=g, dtype=torch.float64), torch.randint(3, (9,), generator=g)
    )
    got = per_example_gradients(obj, train.collate(range(9)), include_l2=True)
    assert _max_row_rel(got, _loop(obj, train, list(range(9)))) < 1e-12


def test_dots_equal_gradients_times_s():
    obj = _tiny_bert("none")
    train = make_tiny_examples(6, seed=2)
    batch = train.collate(range(6))
    s = torch.randn(5, obj.num_params, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = (per_example_gradients(obj, batch) @ s.T).T  # (M, B)
    torch.testing.assert_close(per_example_dots(obj, batch, s), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(per_example_dots(obj, batch, s[:1]), expected[:1], rtol=1e-10, atol=1e-12)


def test_dots_in_row_blocks_equal_one_block(monkeypatch):
    """A Linear layer's per-example gradients held a few rows at a time (equal blocks) give the same dots."""
    import fastif_core.engine.per_example as pe

    assert [pe._even_step(64, m) for m in (56, 64, 200, 1, 0)] == [32, 64, 64, 1, 1]
    assert pe._even_step(7, 3) == 3 and pe._even_step(6, 4) == 3
    obj = _tiny_bert("none")
    train = make_tiny_examples(6, seed=2)
    batch = train.collate(range(6))
    s = torch.randn(3, obj.num_params, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    whole = per_example_dots(obj, batch, s)
    largest = max(m.weight.numel() for m in obj.model.modules() if isinstance(m, nn.Linear))
    monkeypatch.setattr(pe, "_BLOCK", 2 * largest)  # two rows of the widest layer at a time: 3 blocks
    torch.testing.assert_close(per_example_dots(obj, batch, s), whole, rtol=1e-12, atol=1e-14)


def test_unsupported_module_names_the_parameter():
    obj = Objective(nn.Sequential(nn.Linear(4, 3), nn.PReLU()), forward=tensor_forward)
    with pytest.raises(ConfigError, match=r"'1\.weight' belongs to a PReLU.*Linear, LayerNorm, Embedding"):
        trainable_layers(obj)
    batch = {"x": torch.randn(2, 4), "labels": torch.tensor([0, 1])}
    with pytest.raises(ConfigError, match="PReLU"):
        per_example_gradients(obj, batch)


def test_tied_weights_are_refused():
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3))
    model[2].weight = model[0].weight
    with pytest.raises(ConfigError, match=r"'0\.weight' is shared"):
        trainable_layers(Objective(model, forward=tensor_forward))
