"""Ground truth for the exact Gauss-Newton solver (``solver=direct``, :mod:`fastif_core.engine.woodbury`): the
Woodbury solve equals the dense damped Gauss-Newton solve on tiny float64 models (3-way cross-entropy with
decayed and undecayed parameters, the HANS two-way loss whose output Hessian is projected, a 1-output
logistic model), equals conjugate gradient converged on the same batch, and its kept factor is rebuilt when
the weights change in place. Its rows are checked against the Gauss-Newton-vector product directly."""

from __future__ import annotations

import pytest
import torch
from factories import make_tiny_bert, make_tiny_examples, make_tiny_logistic

from fastif_core.config import STestConfig
from fastif_core.engine import woodbury as direct
from fastif_core.engine.curvature import exact_damped_solve, gnvp
from fastif_core.engine.examples import sample_indices
from fastif_core.engine.objective import Objective, binary_cross_entropy, classifier_objective, tensor_forward
from fastif_core.engine.solvers import solve, solve_direct_, solve_many
from fastif_core.errors import ConfigError, LissaDivergenceError
from fastif_core.workspace.layout import two_way_aware_cross_entropy


def _bert(loss=None, n: int = 8):
    """The tiny BERT in float64: its last layer's output block, the pooler and the classifier trainable
    (LayerNorm weights and biases undecayed, the rest decayed at wd = 0.01)."""
    model = make_tiny_bert(0, dtype=torch.float64)
    keep = ("bert.encoder.layer.1.output", "bert.pooler", "classifier")
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(keep))
    obj = classifier_objective(model, weight_decay=0.01)
    if loss is not None:
        obj = Objective(model, loss=loss, weight_decay=0.01)
    return obj, make_tiny_examples(n)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _batch_rows(n: int, b: int, seed: int) -> list[int]:
    return list(sample_indices(n, b, torch.Generator().manual_seed(seed)))


def test_factor_rows_reproduce_the_gauss_newton_vector_product():
    """K on a batch: (A + KᵀK) v equals G_b v + μ v computed by the forward/backward product."""
    obj, train = _bert()
    batch = train.collate(range(5))
    with obj.evaluating():
        fac = direct.factor(obj, batch, mu=0.3)
        v = torch.randn(obj.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        want = gnvp(obj, batch, v) + 0.3 * v
    torch.testing.assert_close(fac.apply(v), want, rtol=1e-9, atol=1e-11)
    assert fac.rows.shape == (2 * 5, obj.num_params) and fac.passes == 2  # softmax over 3: rank 2 per example


@pytest.mark.parametrize("loss", [None, two_way_aware_cross_entropy], ids=["cross_entropy", "hans_two_way"])
def test_direct_equals_the_dense_damped_gauss_newton_solve(loss):
    obj, train = _bert(loss)
    if loss is not None:  # two HANS non-entailment rows (label index C = 3): a non-convex output loss
        train.labels[[1, 4]] = 3
    cfg = STestConfig(solver="direct", curvature="gauss_newton", batch_size=6, mu=0.2, seed=3)
    v = obj.grad(train.collate([7]), include_l2=False)
    result = solve(obj, v, train, cfg)
    exact = exact_damped_solve(
        obj, train.collate(_batch_rows(len(train), 6, 3)), v, damping=0.2, curvature="gauss_newton"
    )
    assert _rel(result.s_test, exact) < 1e-9
    stats = result.stats()
    assert stats["solver"] == "direct" and stats["converged"] is True and stats["residual"] < 1e-10


def test_direct_on_a_one_output_logistic_model():
    model, train = make_tiny_logistic(0, n=40, d=5)
    obj = Objective(model, forward=tensor_forward, loss=binary_cross_entropy, weight_decay=0.05)
    v = obj.grad(train.collate([3]))
    cfg = STestConfig(solver="direct", curvature="gauss_newton", batch_size=40, mu=0.01)
    exact = exact_damped_solve(obj, train.collate(range(40)), v, damping=0.01, curvature="gauss_newton")
    assert _rel(solve(obj, v, train, cfg).s_test, exact) < 1e-9


def test_direct_is_the_fixed_point_that_gauss_newton_cg_approaches():
    obj, train = _bert()
    v = obj.grad(train.collate([2, 6]), include_l2=False)
    base = {"curvature": "gauss_newton", "batch_size": 4, "mu": 0.5, "repeats": 2}
    cg = solve(obj, v, train, STestConfig(solver="cg", depth=500, tolerance=1e-12, **base))
    exact = solve(obj, v, train, STestConfig(solver="direct", **base))
    assert _rel(exact.s_test, cg.s_test) < 1e-8
    assert exact.rel_std is not None and exact.rel_std == pytest.approx(cg.rel_std, rel=1e-6)


def _three_gradients(obj: Objective, train) -> torch.Tensor:
    with obj.evaluating():
        return torch.stack([obj.grad(train.collate([i]), include_l2=False) for i in (0, 3, 5)])


def test_many_vectors_equal_single_solves_and_the_factor_is_built_once():
    obj, train = _bert()
    vs, cfg = (
        _three_gradients(obj, train),
        STestConfig(solver="direct", curvature="gauss_newton", batch_size=5, mu=0.4),
    )
    many = solve_many(obj, vs, train, cfg)
    built = obj.__dict__["_direct_factor"][1]
    for m in range(3):
        single = solve(obj, vs[m], train, cfg)
        assert _rel(many.s_test[m], single.s_test) < 1e-12 and single.hvps == many.results[m].hvps == 2
    assert obj.__dict__["_direct_factor"][1] is built  # the singles reused the factor of the batched solve


def test_the_in_place_residual_is_the_residual_of_the_system():
    """``solve_`` reports ``‖Kᵀ(w − Kx)‖/‖v‖`` without a pass over K: on a factor whose Cholesky factor is
    deliberately wrong (so the solve is inexact) it equals the residual measured with the system itself."""
    obj, train = _bert()
    with obj.evaluating():
        fac = direct.factor(obj, train.collate(range(6)), mu=0.3)
        vs = torch.stack([obj.grad(train.collate([i]), include_l2=False) for i in (1, 7)])
    off = torch.linalg.cholesky(
        fac.chol @ fac.chol.T * 1.3 + 0.1 * torch.eye(len(fac.chol), dtype=torch.float64)
    )
    bad = direct.GaussNewtonFactor(fac.rows, fac.a_inv, off, fac.kk, fac.passes)
    x = vs.clone()
    reported = bad.solve_(x)
    measured = bad.residual(x, vs)
    assert float(measured.min()) > 1e-3  # inexact, so the check means something
    torch.testing.assert_close(reported, measured, rtol=1e-8, atol=0.0)
    exact = vs.clone()
    assert float(fac.solve_(exact).max()) < 1e-12 and float(fac.residual(exact, vs).max()) < 1e-12


def test_float32_solves_need_no_refinement():
    """In float32 a solve whose products with K are summed in float64 block by block leaves a residual
    near float32 precision (measured in float64 against the same K), and reports one as small."""
    model = make_tiny_bert(0, dtype=torch.float32)
    obj, train = classifier_objective(model, weight_decay=0.01), make_tiny_examples(8)
    with obj.evaluating():
        fac = direct.factor(obj, train.collate(range(8)), mu=0.05)
        vs = torch.stack([obj.grad(train.collate([i]), include_l2=False) for i in (0, 5)])
    x = vs.clone()
    reported = fac.solve_(x)
    wide = direct.GaussNewtonFactor(fac.rows.double(), fac.a_inv.double(), fac.chol, fac.kk, fac.passes)
    measured = wide.residual(x.double(), vs.double())
    assert float(measured.max()) < 1e-5 and float(reported.max()) < 1e-5


def test_the_in_place_batch_solve_equals_solve_many():
    obj, train = _bert()
    vs, cfg = (
        _three_gradients(obj, train),
        STestConfig(solver="direct", curvature="gauss_newton", batch_size=5, mu=0.4),
    )
    want = solve_many(obj, vs, train, cfg)
    x = vs.clone()
    stats = solve_direct_(obj, x, train, cfg)
    assert _rel(x, want.s_test) < 1e-12
    assert [s.converged for s in stats] == [True] * 3 and all(s.measure < 1e-10 for s in stats)
    with pytest.raises(ConfigError, match="solver=direct with repeats=1"):
        solve_direct_(
            obj, vs.clone(), train, STestConfig(solver="direct", curvature="gauss_newton", repeats=2)
        )


def test_an_in_place_weight_update_rebuilds_the_factor():
    """A correction step changes the weights in place: the kept factor must not answer for the old model."""
    obj, train = _bert()
    cfg = STestConfig(solver="direct", curvature="gauss_newton", batch_size=5, mu=0.4)
    v = obj.grad(train.collate([1]), include_l2=False)
    solve(obj, v, train, cfg)
    with torch.no_grad():
        next(p for n, p in obj.model.named_parameters() if n.startswith("classifier")).mul_(1.5)
    after = solve(obj, v, train, cfg).s_test
    exact = exact_damped_solve(
        obj, train.collate(_batch_rows(len(train), 5, 0)), v, damping=0.4, curvature="gauss_newton"
    )
    assert _rel(after, exact) < 1e-9


def _doubled_two_way(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return 2.0 * two_way_aware_cross_entropy(logits, labels)


@pytest.mark.parametrize("change", ["relabel", "retext", "loss"])
def test_the_kept_factor_answers_only_for_the_same_batch_content_and_loss(change):
    """The same training-set object, the same size, the same weights: relabelling examples of the seeded
    batch in place (HANS non-entailment, label C, has another output Hessian), giving one of them another
    text, or another loss must rebuild the kept factor, not answer with the old one."""
    obj, train = _bert(two_way_aware_cross_entropy)
    cfg = STestConfig(solver="direct", curvature="gauss_newton", batch_size=6, mu=0.2, seed=3)
    v = obj.grad(train.collate([7]), include_l2=False)
    rows = _batch_rows(len(train), 6, 3)
    before = solve(obj, v, train, cfg).s_test
    if change == "relabel":
        train.labels[rows[:3]] = 3
    elif change == "retext":
        outside = next(i for i in range(len(train)) if i not in rows)
        train.input_ids[rows[0]] = list(train.input_ids[outside])
        if train.token_type_ids is not None:
            train.token_type_ids[rows[0]] = list(train.token_type_ids[outside])
    else:
        obj.loss = _doubled_two_way
    after = solve(obj, v, train, cfg).s_test
    exact = exact_damped_solve(obj, train.collate(rows), v, damping=0.2, curvature="gauss_newton")
    assert _rel(before, exact) > 1e-3  # the change really changes the system
    assert _rel(after, exact) < 1e-9


def test_a_content_equal_training_set_reuses_the_kept_factor():
    """The key is the seeded batch's content: a copy of the training set (another object) finds it."""
    obj, train = _bert()
    cfg = STestConfig(solver="direct", curvature="gauss_newton", batch_size=5, mu=0.4)
    v = obj.grad(train.collate([1]), include_l2=False)
    solve(obj, v, train, cfg)
    built = obj.__dict__["_direct_factor"][1]
    copy = train.subset(range(len(train)))
    assert copy is not train and copy.labels is not train.labels
    again = solve(obj, v, train, cfg).s_test
    assert solve(obj, v, copy, cfg).s_test.equal(again)  # the same kept factor, the same products
    assert obj.__dict__["_direct_factor"][1] is built


def test_direct_refuses_the_hessian_and_non_finite_input():
    with pytest.raises(ConfigError, match="curvature.*gauss_newton for solver=direct"):
        STestConfig(solver="direct", mu=1.0).validate()
    obj, train = _bert()
    v = torch.full((obj.num_params,), float("nan"), dtype=torch.float64)
    with pytest.raises(LissaDivergenceError, match="not finite"):
        solve(obj, v, train, STestConfig(solver="direct", curvature="gauss_newton", batch_size=4, mu=1.0))
