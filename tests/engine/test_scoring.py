"""Shared scoring: ``score_many`` by both paths equals M single-query scorings and the backward reference."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from factories import make_tiny_bert, make_tiny_examples, make_tiny_logistic
from torch import nn

from fastif_core.benchmarks.scoring import calibration, scoring_benchmark
from fastif_core.engine.objective import Objective, binary_cross_entropy, classifier_objective, tensor_forward
from fastif_core.engine.scoring import (
    choose_method,
    score_candidates,
    score_candidates_reference,
    score_many,
    scoring_costs,
)
from fastif_core.errors import ConfigError

INDICES = [3, 1, 4, 1, 5, 9, 2, 6, 11]  # mixed lengths, a duplicate, not sorted


def _l2_dots(obj: Objective, s: torch.Tensor) -> torch.Tensor:
    """``∇(wd·Σ_decayed θ²) · s_m`` ``(M,)``, written out independently of the engine."""
    decayed = set(obj.decayed)
    l2 = obj.flatten({n: 2 * obj.weight_decay * p * (n in decayed) for n, p in obj.params.items()})
    return s @ l2


def _accepts_include_l2(fn) -> bool:
    return "include_l2" in inspect.signature(fn).parameters


def _single_queries(obj: Objective, s: torch.Tensor, train, indices, include_l2: bool) -> torch.Tensor:
    """M calls of ``score_candidates``; an engine without ``include_l2`` always adds the L2 term."""
    if _accepts_include_l2(score_candidates):
        rows = [score_candidates(obj, r, train, indices, 4, include_l2=include_l2) for r in s]
        return torch.stack(rows)
    with_l2 = torch.stack([score_candidates(obj, r, train, indices, 4) for r in s])
    return with_l2 if include_l2 else with_l2 + _l2_dots(obj, s)[:, None]


def _reference(obj: Objective, s: torch.Tensor, train, indices) -> torch.Tensor:
    """The per-example backward loop with the L2 term, ``(M, k)``."""
    if _accepts_include_l2(score_candidates_reference):
        return torch.stack([score_candidates_reference(obj, r, train, indices, include_l2=True) for r in s])
    return torch.stack([score_candidates_reference(obj, r, train, indices) for r in s])


def _s(obj: Objective, m: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(m, obj.num_params, generator=gen, dtype=obj.dtype) * 0.1


@pytest.fixture(scope="module")
def tiny() -> tuple[Objective, object]:
    """A float64 tiny BERT, every parameter trainable (embeddings too), and 12 pairs of mixed lengths."""
    obj = classifier_objective(make_tiny_bert(1, dtype=torch.float64), weight_decay=0.01)
    return obj, make_tiny_examples(12, seed=1)


@pytest.mark.parametrize("m", [1, 2])
def test_both_methods_equal_single_queries_and_reference(tiny, m):
    obj, train = tiny
    s = _s(obj, m, seed=m)
    reference = _reference(obj, s, train, INDICES)  # with the L2 term; without it: + its dot, per row
    for include_l2 in (True, False):
        expected = reference if include_l2 else reference + _l2_dots(obj, s)[:, None]
        single = _single_queries(obj, s, train, INDICES, include_l2)
        torch.testing.assert_close(single, expected, rtol=1e-9, atol=1e-12)
        for method in ("jvp", "per_example"):
            got = score_many(obj, s, train, INDICES, batch_size=4, include_l2=include_l2, method=method)
            assert got.shape == (m, len(INDICES))
            torch.testing.assert_close(got, single, rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(got[:, 1], got[:, 3], rtol=1e-12, atol=0)  # duplicate: both columns


@pytest.mark.parametrize("method", ["jvp", "per_example"])
def test_chunking_does_not_change_the_result(tiny, method):
    obj, train = tiny
    s, rows = _s(obj, 2, seed=7), INDICES[:5]
    runs = [score_many(obj, s, train, rows, batch_size=bs, method=method) for bs in (1, 3, 64)]
    for other in runs[1:]:
        torch.testing.assert_close(other, runs[0], rtol=1e-10, atol=1e-13)


def test_logistic_model_and_progress():
    model, train = make_tiny_logistic(seed=2, n=30)
    obj = Objective(model, forward=tensor_forward, loss=binary_cross_entropy, weight_decay=0.1)
    s, rows = _s(obj, 4, seed=3), [29, 0, 7, 7, 12]
    seen: list[float] = []
    got = score_many(
        obj,
        s,
        train,
        rows,
        batch_size=2,
        include_l2=True,
        method="per_example",
        progress=lambda f, msg: seen.append(f),
    )
    torch.testing.assert_close(got, _reference(obj, s, train, rows), rtol=1e-10, atol=1e-13)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0) and len(seen) == 3


def test_cost_model_is_linear_in_m_and_per_example_wins_for_many_tests(tiny):
    obj, _ = tiny
    costs = [scoring_costs(obj, m, 30.0) for m in (1, 2, 3)]
    for path in ("jvp", "per_example"):
        assert costs[2][path] - costs[1][path] == pytest.approx(costs[1][path] - costs[0][path])
    assert costs[0]["jvp"] * 2 == pytest.approx(costs[1]["jvp"])  # M tangent passes, no shared part
    choices = [choose_method(obj, m, 30.0) for m in (1, 2, 4, 16, 64)]
    assert choices[-1] == "per_example" and choices == sorted(choices)  # jvp... then per_example
    s, train = _s(obj, 2), make_tiny_examples(3, seed=4)
    auto = score_many(obj, s, train, [2, 0, 1], method="auto")
    torch.testing.assert_close(auto, score_many(obj, s, train, [2, 0, 1], method=choices[1]))
    unsupported = Objective(nn.Sequential(nn.Linear(4, 3), nn.PReLU()), forward=tensor_forward)
    assert choose_method(unsupported, 64, 1.0) == "jvp"  # no per-example rule for PReLU: JVP still works


def test_bad_inputs_raise_config_errors(tiny):
    obj, train = tiny
    with pytest.raises(ConfigError, match=r"expected \(M, "):
        score_many(obj, torch.zeros(obj.num_params), train, [0])
    with pytest.raises(ConfigError, match="method"):
        score_many(obj, _s(obj, 1), train, [0], method="fast")
    with pytest.raises(ConfigError, match="batch_size"):
        score_many(obj, _s(obj, 1), train, [0], batch_size=0)
    assert score_many(obj, _s(obj, 2), train, []).shape == (2, 0)


def test_benchmark_runs_and_both_methods_agree(tiny):
    obj, train = tiny
    result = scoring_benchmark(obj, train, candidates=4, ms=(1, 2), batch_size=4)
    assert set(result["rows"]) == {"1", "2"}
    for row in result["rows"].values():
        assert row["max_rel_diff"] < 1e-10
        assert row["jvp"]["candidates_per_s"] > 0 and row["per_example"]["candidates_per_s"] > 0
        assert row["auto_choice"] in ("jvp", "per_example")
    assert all(math.isfinite(v) for v in calibration(result).values())
