"""The engine benchmark functions run on a real (tiny) BERT and report consistent figures."""

from __future__ import annotations

import pytest
from factories import make_tiny_bert, make_tiny_examples

from fastif_core.bench import engine_benchmark
from fastif_core.hessian import HVP_METHODS
from fastif_core.objective import classifier_objective


def test_engine_benchmark_reports_every_measurement_and_consistent_ratios():
    model = make_tiny_bert(0)
    for p in model.bert.embeddings.parameters():
        p.requires_grad_(False)
    obj = classifier_objective(model, weight_decay=0.01)
    result = engine_benchmark(
        obj, make_tiny_examples(12), candidates=12, batch_size=4, reference_count=3, hvp_repeats=1
    )
    assert set(result["hvp"]) == {f"{m}/B={b}" for m in HVP_METHODS for b in (1, 8)}
    assert all(r["seconds_per_hvp"] > 0 for r in result["hvp"].values())
    jvp, forward = result["scoring"]["jvp"], result["forward"]
    assert jvp["examples"] == forward["examples"] == 12 and result["scoring"]["reference"]["examples"] == 3
    assert result["scoring_cost_vs_forward"] == pytest.approx(
        forward["examples_per_s"] / jvp["examples_per_s"]
    )
    assert result["trainable_params"] == obj.num_params
