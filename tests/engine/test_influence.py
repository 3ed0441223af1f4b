"""Candidate scoring (JVP) against the per-example backward reference, ranking, the full query."""

from __future__ import annotations

import pytest
import torch
from factories import make_tiny_bert, make_tiny_examples, packaged_model_path
from transformers import AutoModelForSequenceClassification

from fastif_core.config import InfluenceConfig, STestConfig
from fastif_core.engine.influence import compute_influence, rank
from fastif_core.engine.influence import test_gradient as gradient_of_test
from fastif_core.engine.objective import Objective, classifier_objective
from fastif_core.engine.scoring import score_candidates, score_candidates_reference
from fastif_core.engine.solvers import solve
from fastif_core.errors import ConfigError


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _random_s_test(obj: Objective, seed: int = 0) -> torch.Tensor:
    return torch.randn(obj.num_params, generator=torch.Generator().manual_seed(seed)) * 0.1


@pytest.fixture(scope="module")
def minilm() -> Objective:
    """The packaged MiniLM with a 3-way head; embeddings and 4 of 6 layers frozen to keep it quick."""
    torch.manual_seed(0)
    path = packaged_model_path()
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=3, attn_implementation="eager"
    )
    for name, p in model.named_parameters():
        p.requires_grad_(
            not name.startswith(("bert.embeddings", *(f"bert.encoder.layer.{i}." for i in range(4))))
        )
    return classifier_objective(model, weight_decay=0.005)


def test_jvp_scores_equal_backward_reference_on_tiny_bert():
    obj = classifier_objective(make_tiny_bert(0), weight_decay=0.01)
    train = make_tiny_examples(12, seed=1)
    indices = [3, 1, 4, 1, 5, 9, 2, 6, 11]  # mixed lengths, a duplicate, not sorted
    s_test = _random_s_test(obj)
    fast = score_candidates(obj, s_test, train, indices, batch_size=4)
    slow = score_candidates_reference(obj, s_test, train, indices)
    assert fast.shape == (len(indices),)
    assert _rel(fast, slow) < 1e-4
    # The duplicate lands in both positions. Positions 1 and 3 sit in different batches of 4 (other padding,
    # so another reduction order): equal to float32 rounding, not bit for bit (AVX2 vs AVX-512 differ).
    torch.testing.assert_close(fast[1], fast[3], rtol=1e-5, atol=1e-6 * float(fast.abs().max()))
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5 * float(slow.abs().max()))


def test_jvp_scores_equal_backward_reference_on_packaged_minilm(minilm):
    train = make_tiny_examples(8, seed=2)
    indices = list(range(8))
    s_test = _random_s_test(minilm, seed=1)
    fast = score_candidates(minilm, s_test, train, indices, batch_size=8)
    slow = score_candidates_reference(minilm, s_test, train, indices)
    assert _rel(fast, slow) < 1e-4


def test_values_are_minus_gradient_dot_s_test_and_dropout_is_off():
    model = make_tiny_bert(4)
    model.bert.embeddings.dropout.p = 0.3
    model.train()
    obj = classifier_objective(model, weight_decay=0.02)
    train = make_tiny_examples(6, seed=3)
    s_test = _random_s_test(obj, seed=2)
    model.eval()
    expected = torch.stack([-(obj.grad(train.collate([i]), include_l2=False) @ s_test) for i in range(6)])
    with_l2 = torch.stack([-(obj.grad(train.collate([i]), include_l2=True) @ s_test) for i in range(6)])
    eval_grad = obj.grad(train.collate([0, 1]), include_l2=False)
    model.train()
    torch.testing.assert_close(
        score_candidates(obj, s_test, train, range(6), batch_size=3), expected, rtol=1e-4, atol=1e-6
    )
    torch.testing.assert_close(
        score_candidates(obj, s_test, train, range(6), batch_size=4, include_l2=True),
        with_l2,
        rtol=1e-4,
        atol=1e-6,
    )
    assert float((with_l2 - expected).std()) < 1e-5 * float(
        expected.abs().max()
    )  # the L2 dot is one constant
    # the test gradient is the data-loss gradient in eval mode (dropout off), whatever the model's mode
    torch.testing.assert_close(gradient_of_test(obj, train.collate([0, 1])), eval_grad)
    assert model.training


def test_rank_orders_helpful_most_negative_and_harmful_most_positive():
    indices = torch.tensor([10, 11, 12, 13, 14])
    values = torch.tensor([0.5, -2.0, 3.0, -0.25, 0.0])
    (help_idx, help_val), (harm_idx, harm_val) = rank(indices, values, top=2)
    assert help_idx.tolist() == [11, 13] and help_val.tolist() == [-2.0, -0.25]
    assert harm_idx.tolist() == [12, 10] and harm_val.tolist() == [3.0, 0.5]
    assert rank(indices, values, top=0)[0][0].tolist() == [11, 13, 14, 10, 12]


def test_compute_influence_combines_test_gradient_lissa_and_scoring():
    model = make_tiny_bert(5)
    for p in model.bert.embeddings.parameters():
        p.requires_grad_(False)
    obj = classifier_objective(model, weight_decay=0.01)
    train = make_tiny_examples(10, seed=4)
    test = make_tiny_examples(1, seed=9).collate([0])
    cfg = InfluenceConfig(s_test=STestConfig(depth=20, batch_size=2, repeats=2, scale=100.0), k=None, top=3)
    seen: list[float] = []
    result = compute_influence(obj, test, train, None, cfg, progress=lambda f, m: seen.append(f))
    expected = solve(obj, gradient_of_test(obj, test), train, cfg.s_test)
    torch.testing.assert_close(result.s_test, expected.s_test)
    torch.testing.assert_close(
        result.values,
        score_candidates_reference(obj, expected.s_test, train, range(10)),
        rtol=1e-4,
        atol=1e-7,
    )
    assert result.indices.tolist() == list(range(10))
    assert result.s_test_stats["repetitions"] == 2 and result.s_test_stats["rel_std"] is not None
    assert set(result.seconds) == {"test_gradient", "s_test", "scoring", "total"}
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)
    harmful_idx, harmful_val = result.harmful(3)
    assert harmful_val.tolist() == sorted(result.values.tolist(), reverse=True)[:3]
    assert result.helpful(3)[1].tolist() == sorted(result.values.tolist())[:3]
    subset = compute_influence(obj, test, train, [7, 2], cfg)
    torch.testing.assert_close(subset.values, result.values[[7, 2]])


def test_bad_inputs_raise_config_errors():
    obj = classifier_objective(make_tiny_bert(6), weight_decay=0.0)
    train = make_tiny_examples(4)
    with pytest.raises(ConfigError, match="device"):
        score_candidates(obj, _random_s_test(obj), train, [0], device="meta")
    with pytest.raises(ConfigError, match="expected"):
        score_candidates(obj, torch.zeros(3), train, [0])
    with pytest.raises(ConfigError, match="top"):
        compute_influence(obj, train.collate([0]), train, [1], InfluenceConfig(top=-1))


@pytest.mark.gpu
def test_engine_on_cuda_matches_cpu():
    cpu = make_tiny_bert(7)
    for p in cpu.bert.embeddings.parameters():
        p.requires_grad_(False)
    gpu = make_tiny_bert(7).cuda()
    for p in gpu.bert.embeddings.parameters():
        p.requires_grad_(False)
    obj_cpu, obj_gpu = classifier_objective(cpu, 0.01), classifier_objective(gpu, 0.01)
    train, test = make_tiny_examples(10, seed=5), make_tiny_examples(1, seed=8).collate([0])
    cfg = InfluenceConfig(s_test=STestConfig(depth=10, batch_size=2, repeats=2, scale=100.0), k=None)
    on_cpu = compute_influence(obj_cpu, test, train, None, cfg)
    on_gpu = compute_influence(obj_gpu, test, train, None, cfg, device="cuda")
    assert on_gpu.values.device.type == "cuda" and on_gpu.s_test.device.type == "cuda"
    torch.testing.assert_close(on_gpu.s_test.cpu(), on_cpu.s_test, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(on_gpu.values.cpu(), on_cpu.values, rtol=1e-3, atol=1e-5)
    slow = score_candidates_reference(obj_gpu, on_gpu.s_test, train, range(10))
    assert _rel(on_gpu.values, slow) < 1e-4
