"""The engine benchmark times the real computations: the JVP scores and the per-example backward scores
it times equal influence computed here from first principles (-(∇L(z)·s_test), one autograd backward
per candidate), and it reports how far the two timed paths agree."""

from __future__ import annotations

import torch
from factories import make_tiny_bert, make_tiny_examples

from fastif_core.benchmarks.engine import bench_scoring, engine_benchmark
from fastif_core.engine.curvature import HVP_METHODS
from fastif_core.engine.objective import classifier_objective


def tiny_objective():
    model = make_tiny_bert(0)
    for p in model.bert.embeddings.parameters():
        p.requires_grad_(False)
    return classifier_objective(model, weight_decay=0.01)


def first_principles_influence(obj, train, rows, s_test) -> torch.Tensor:
    """``-(∇ℓ(z_r)·s_test)`` for each row: the gradient of the row's own data loss (the default
    ``gradient_l2 = none``), eval mode."""
    out = []
    with obj.evaluating():
        for r in rows:
            params = {n: p.detach().requires_grad_(True) for n, p in obj.params.items()}
            loss = obj.data_loss(params, train.collate([r])).sum()
            grads = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
            out.append(-(obj.flatten(grads).double() @ s_test.double()))
    return torch.stack(out)


def test_timed_scores_equal_first_principles_influence():
    obj, train = tiny_objective(), make_tiny_examples(12)
    s_test = torch.randn(obj.num_params, generator=torch.Generator().manual_seed(3))
    rows = [7, 2, 11, 0, 5]
    result = bench_scoring(obj, train, rows + [1, 3], batch_size=3, reference_count=5, s_test=s_test)
    values = result["values"]
    assert values["rows"] == rows
    expected = first_principles_influence(obj, train, rows, s_test)
    assert float(expected.abs().max()) > 0
    torch.testing.assert_close(
        torch.tensor(values["jvp"], dtype=torch.float64), expected, rtol=1e-4, atol=1e-6
    )
    torch.testing.assert_close(
        torch.tensor(values["reference"], dtype=torch.float64), expected, rtol=1e-4, atol=1e-6
    )
    assert result["agreement"]["rel_err"] < 1e-4 and result["agreement"]["candidates"] == 5


def test_engine_benchmark_reports_agreement_of_the_timed_paths_and_every_measurement():
    obj, train = tiny_objective(), make_tiny_examples(12)
    result = engine_benchmark(obj, train, candidates=12, batch_size=4, reference_count=3, hvp_repeats=1)
    assert set(result["hvp"]) == {f"{m}/B={b}" for m in HVP_METHODS for b in (1, 8)}
    scoring = result["scoring"]
    assert scoring["jvp"]["examples"] == result["forward"]["examples"] == 12
    assert scoring["reference"]["examples"] == len(scoring["values"]["rows"]) == 3
    assert scoring["agreement"]["rel_err"] < 1e-4 and scoring["agreement"]["max_abs_reference"] > 0
    assert result["trainable_params"] == obj.num_params
