"""Objective: which parameters count, the loss it defines, flat vectors, eval mode, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from factories import make_tiny_bert, make_tiny_examples
from torch import nn

from fastif_core.engine.objective import Objective, binary_cross_entropy, classifier_objective, tensor_forward
from fastif_core.errors import ConfigError


def _freeze_encoder_layer(model: nn.Module, layer: int) -> None:
    for p in model.bert.encoder.layer[layer].parameters():
        p.requires_grad_(False)


def test_params_are_trainable_only_and_decay_skips_bias_and_layernorm():
    model = make_tiny_bert(0)
    for p in model.bert.embeddings.parameters():
        p.requires_grad_(False)
    _freeze_encoder_layer(model, 0)
    obj = classifier_objective(model, weight_decay=0.01)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert obj.names == trainable
    assert not any(n.startswith("bert.embeddings") or ".layer.0." in n for n in obj.names)
    assert obj.num_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert all(not n.endswith("bias") and "LayerNorm" not in n for n in obj.decayed)
    assert (
        "classifier.weight" in obj.decayed
        and "bert.encoder.layer.1.attention.self.query.weight" in obj.decayed
    )
    assert "bert.encoder.layer.1.output.LayerNorm.weight" in obj.names


def test_per_example_loss_is_cross_entropy_plus_l2_of_decayed_params():
    model = make_tiny_bert(1)
    obj = classifier_objective(model, weight_decay=0.03)
    batch = make_tiny_examples(5).collate(range(5))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        ce = F.cross_entropy(model(**inputs).logits, batch["labels"], reduction="none")
    l2 = sum(p.pow(2).sum() for n, p in model.named_parameters() if n in obj.decayed)
    expected = ce + 0.03 * l2
    torch.testing.assert_close(obj.per_example_loss(obj.params, batch), expected)
    torch.testing.assert_close(obj.batch_loss(obj.params, batch), expected.mean())


def test_grad_matches_autograd_through_the_model():
    model = nn.Linear(4, 1).double()
    obj = Objective(model, forward=tensor_forward, loss=binary_cross_entropy, weight_decay=0.1)
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    loss = F.binary_cross_entropy_with_logits(model(x)[:, 0], y.double()) + 0.1 * model.weight.pow(2).sum()
    loss.backward()
    expected = torch.cat([model.weight.grad.reshape(-1), model.bias.grad])
    torch.testing.assert_close(obj.grad({"x": x, "labels": y}), expected)


def test_flatten_unflatten_round_trip():
    obj = classifier_objective(make_tiny_bert(2), weight_decay=0.0)
    flat = torch.arange(obj.num_params, dtype=torch.float32)
    back = obj.flatten(obj.unflatten(flat))
    torch.testing.assert_close(back, flat)
    assert {n: t.shape for n, t in obj.unflatten(flat).items()} == {n: p.shape for n, p in obj.params.items()}
    with pytest.raises(ConfigError, match="expected"):
        obj.unflatten(flat[:-1])


def test_evaluating_disables_dropout_and_restores_modes():
    model = make_tiny_bert(3)
    model.bert.embeddings.dropout.p = 0.5
    model.train()
    model.classifier.eval()  # a mixed state must survive
    obj = classifier_objective(model, weight_decay=0.0)
    batch = make_tiny_examples(3).collate(range(3))
    with obj.evaluating():
        a, b = obj.data_loss(obj.params, batch), obj.data_loss(obj.params, batch)
        assert not model.training
    torch.testing.assert_close(a, b)
    assert model.training and model.bert.training and not model.classifier.training


def test_bad_settings_raise_config_errors():
    model = nn.Linear(3, 1)
    with pytest.raises(ConfigError, match="weight_decay"):
        Objective(model, forward=tensor_forward, weight_decay=-1.0)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        Objective(model, forward=tensor_forward)


def test_params_follow_the_model_after_in_place_updates():
    model = nn.Linear(3, 2)
    obj = Objective(model, forward=tensor_forward, weight_decay=0.0)
    with torch.no_grad():
        model.weight.fill_(2.0)
    model.double()  # dtype conversion swaps the parameters' data
    assert obj.dtype == torch.float64 and torch.equal(
        obj.params["weight"], torch.full((2, 3), 2.0, dtype=torch.float64)
    )


def test_two_way_label_loss_on_a_three_way_model_is_minus_log_p_neutral_plus_p_contradiction():
    """Label index C (= 3 on an MNLI model) is HANS's *non-entailment*: ``-log(p_neutral + p_contradiction)``,
    checked against softmax probabilities computed by hand; labels 0..C-1 stay plain cross-entropy."""
    import math

    from fastif_core.workspace.layout import two_way_aware_cross_entropy

    logits = torch.tensor(
        [[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-3.0, 4.0, 1.0], [1.0, 1.0, -2.0]], dtype=torch.float64
    )
    labels = torch.tensor([3, 3, 1, 0])
    got = two_way_aware_cross_entropy(logits, labels)
    for i, (row, label) in enumerate(zip(logits.tolist(), labels.tolist(), strict=True)):
        p = [math.exp(z) / sum(math.exp(w) for w in row) for z in row]
        expected = -math.log(p[1] + p[2]) if label == 3 else -math.log(p[label])
        assert float(got[i]) == pytest.approx(expected, rel=1e-12), (i, row, label)
    assert float(got[0]) != pytest.approx(float(F.cross_entropy(logits[:1], torch.tensor([2]))))


def test_hans_non_entailment_example_gets_the_merged_loss_in_a_prepared_workspace(tiny_workspace_template):
    """End to end: a 2-way HANS example of the built-in corpus on the workspace's 3-way model."""
    import math

    from fastif_core.store import Store
    from fastif_core.workspace.layout import LoadedWorkspace

    loaded = LoadedWorkspace.load(tiny_workspace_template)
    assert loaded.label_names == ("entailment", "neutral", "contradiction")
    with Store.open(tiny_workspace_template) as store:
        rows = [r.to_record() for r in store.query_examples(limit=1000)]
    example = next(r for r in rows if r.label == "non-entailment")
    batch = loaded.encode_test(example)
    assert batch["labels"].tolist() == [3]
    obj = loaded.objective
    with obj.evaluating():
        loss = float(obj.data_loss(obj.params, batch)[0])
        logits = obj.outputs(obj.params, batch)[0].double().tolist()
    p = [math.exp(z) / sum(math.exp(w) for w in logits) for z in logits]
    assert loss == pytest.approx(-math.log(p[1] + p[2]), rel=1e-5)
