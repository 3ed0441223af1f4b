"""Batched s_test: ``solve_many`` equals M separate ``solve`` runs (same seeds) for every solver x curvature
the engine offers, with per-vector convergence; the batched autograd products equal the plain loop."""

from __future__ import annotations

import pytest
import torch
from factories import make_tiny_bert, make_tiny_examples

from fastif_core.config import STestConfig
from fastif_core.engine.curvature import curvature_vp, curvature_vps
from fastif_core.engine.objective import classifier_objective
from fastif_core.engine.solvers import (
    finish_many,
    many_from_flat,
    many_to_flat,
    solve,
    solve_many,
    solve_many_repetitions,
)
from fastif_core.errors import ConfigError, LissaDivergenceError


@pytest.fixture(scope="module")
def bert():
    """The tiny BERT in float64, its last layer's output block, the pooler and the classifier trainable,
    and 8 training pairs; V = the gradients of 2 different test batches (different norms and directions)."""
    model = make_tiny_bert(0, dtype=torch.float64)
    keep = ("bert.encoder.layer.1.output", "bert.pooler", "classifier")
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(keep))
    obj, train = classifier_objective(model, weight_decay=0.01), make_tiny_examples(8)
    with obj.evaluating():
        v = torch.stack([obj.grad(train.collate(rows), include_l2=False) for rows in ([0], [1, 5])])
    return obj, train, v


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


CASES = {  # small enough for a test (each case: 2 × 3 solves of a few steps); repeats > 1 everywhere
    "lissa/hessian": STestConfig(depth=8, batch_size=2, repeats=2, scale=50.0, damping=0.02),
    "lissa/gauss_newton": STestConfig(
        curvature="gauss_newton",
        depth=6,
        batch_size=2,
        repeats=2,
        scale=50.0,
        damping=0.02,
        window=2,
        tolerance=0.05,
    ),
    "lissa/estimated_scale": STestConfig(depth=6, batch_size=3, repeats=2, scale=0.0, mu=0.5, tolerance=1e-3),
    "cg/hessian": STestConfig(solver="cg", depth=30, batch_size=4, repeats=2, mu=5.0, tolerance=1e-8),
    "cg/gauss_newton": STestConfig(
        solver="cg", curvature="gauss_newton", depth=30, batch_size=3, repeats=2, mu=0.2, tolerance=1e-6
    ),
    "direct/gauss_newton": STestConfig(
        solver="direct", curvature="gauss_newton", batch_size=3, repeats=2, mu=0.2
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_solve_many_equals_separate_solves(bert, name):
    obj, train, v = bert
    cfg = CASES[name]
    many = solve_many(obj, v, train, cfg)
    assert many.s_test.shape == v.shape and len(many.results) == len(v)
    for m in range(len(v)):
        single = solve(obj, v[m], train, cfg)
        assert _rel(many.s_test[m], single.s_test) < 1e-5, name
        got, want = many.results[m], single
        assert got.depths == want.depths and got.scale == want.scale
        assert got.hvps - got.scale_hvps == want.hvps - want.scale_hvps  # the scale is estimated once, cached
        stats, ref = got.stats(), want.stats()
        for key in set(ref) - {"seconds", "rel_std", "norm", "residual", "change", "hvps"}:
            assert stats[key] == ref[key], (name, key)
        for key in ("rel_std", "norm", "residual", "change"):
            if ref.get(key) is not None:
                assert stats[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-12), (name, key)
        torch.testing.assert_close(got.s_test, many.s_test[m], rtol=0, atol=0)  # a view of the stacked S


def test_vectors_converge_at_their_own_step(bert):
    """CG with a tolerance: the vectors stop at different iterations, exactly where a single solve stops,
    and a converged vector is no longer multiplied (curvature products counted per vector)."""
    obj, train, v = bert
    cfg = CASES["cg/hessian"]
    many = solve_many(obj, v, train, cfg)
    depths = [r.depths for r in many.results]
    assert depths == [solve(obj, row, train, cfg).depths for row in v]
    assert len({tuple(d.values()) for d in depths}) > 1, depths  # not all stopped together
    assert all(r.stats()["converged"] for r in many.results)
    assert [r.hvps for r in many.results] == [sum(d.values()) for d in depths]


@pytest.mark.parametrize(
    "curvature,method",
    [
        ("hessian", "double_backward"),
        ("hessian", "forward_over_reverse"),
        ("gauss_newton", "double_backward"),
    ],
)
def test_batched_products_equal_the_loop(bert, curvature, method):
    """The CUDA path (one autograd call for K tangents) computes the same products as K single calls."""
    obj, train, v = bert
    batch = train.collate([0, 2, 5, 7])
    with obj.evaluating():
        loop = [curvature_vp(obj, batch, row, curvature, method) for row in v]
        batched = curvature_vps(obj, batch, list(v), curvature, method, batched=True)
    for a, b in zip(batched, loop, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_batched_solve_equals_the_loop(bert):
    obj, train, v = bert
    cfg = CASES["cg/hessian"]
    loop, batched = (solve_many(obj, v, train, cfg, batched=b) for b in (False, True))
    assert _rel(batched.s_test, loop.s_test) < 1e-8
    assert [r.depths for r in batched.results] == [r.depths for r in loop.results]


def test_flat_round_trip_splits_repetitions_like_ranks(bert):
    """Two "ranks" with repetitions t ≡ rank (mod 2): summing the flat buffers (one all-reduce) gives the
    serial result for every vector."""
    obj, train, v = bert
    cfg = CASES["lissa/hessian"]
    parts = [solve_many_repetitions(obj, v, train, cfg, range(r, cfg.repeats, 2)) for r in (0, 1)]
    flat = many_to_flat(parts[0]) + many_to_flat(parts[1])
    assert flat.shape == (len(v) * (obj.num_params + 2),)
    reps = [{**a.reps, **b.reps} for a, b in zip(*parts, strict=True)]
    combined = finish_many(many_from_flat(flat, parts[0], reps), cfg)
    serial = solve_many(obj, v, train, cfg)
    torch.testing.assert_close(combined.s_test, serial.s_test, rtol=1e-12, atol=1e-14)
    assert [r.rel_std for r in combined.results] == pytest.approx([r.rel_std for r in serial.results])


def test_errors_name_the_vector_and_bad_shapes(bert):
    obj, train, v = bert
    bad = v.clone()
    bad[1] = float("nan")
    with pytest.raises(LissaDivergenceError, match="test vector 1"):
        solve_many(obj, bad, train, CASES["cg/hessian"])
    with pytest.raises(ConfigError, match=r"expected \(M, "):
        solve_many(obj, v[0], train, CASES["cg/hessian"])
    with pytest.raises(ConfigError, match="at least one row"):
        solve_many(obj, v[:0], train, CASES["cg/hessian"])
