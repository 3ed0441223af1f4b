"""Ground truth for gradient sketches (:mod:`fastif_core.engine.sketch`, ``sketch_curvature``) on tiny
float64 models: the in-backward Kronecker projection equals projecting the explicit per-example gradients;
padded batches equal single examples; the damping block equals ``μI + Π(2wd·D)Πᵀ`` formed densely; a sketch of
dimension P with orthogonal factors reproduces the exact damped Gauss-Newton influence of the exact path's
own scoring (sign included) to 1e-8, through both factor backends; Monte-Carlo rows are unbiased."""

from __future__ import annotations

import pytest
import torch
from factories import make_tiny_bert, make_tiny_examples

from fastif_core.engine.curvature import exact_damped_solve
from fastif_core.engine.influence import test_gradient
from fastif_core.engine.objective import classifier_objective
from fastif_core.engine.per_example import per_example_gradients
from fastif_core.engine.scoring import score_candidates
from fastif_core.engine.sketch import build_rows, k_for_dim, make_sketch, sketch_gradients
from fastif_core.engine.sketch_curvature import (
    DualFactor,
    GramAccumulator,
    IdentityFactor,
    PrimalFactor,
    paired_self_influences,
    preconditioned,
    relative,
    scores,
)

MU = 0.3


def _bert(trainable: str):
    """The tiny BERT in float64 with wd = 0.01: ``all`` (embeddings included: Linear, LayerNorm and
    Embedding), ``top`` (last layer's output block: Linear + bias + LayerNorm, pooler, classifier)."""
    model = make_tiny_bert(0, dtype=torch.float64)
    keep = {"all": ("",), "top": ("bert.encoder.layer.1.output", "bert.pooler", "classifier")}[trainable]
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(keep))
    return classifier_objective(model, weight_decay=0.01)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("projection", ["gaussian", "orthogonal"])
@pytest.mark.parametrize("small", ["project", "exact"])
def test_in_backward_projection_equals_projecting_explicit_gradients(projection, small):
    obj = _bert("all")
    sketch = make_sketch(obj, k=5, projection=projection, small=small, seed=3)
    assert sketch.dim < obj.num_params / 50  # a real reduction, not a full-rank sketch
    batch = make_tiny_examples(6, seed=2).collate(range(6))
    got = sketch_gradients(obj, sketch, batch)
    want = sketch.project(obj, per_example_gradients(obj, batch))
    assert got.shape == (6, sketch.dim)
    # float64, the same sums in two orders (projected tokens vs projected per-example gradients)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_padded_batch_equals_single_examples():
    obj = _bert("all")
    sketch = make_sketch(obj, k=6, seed=1)
    train = make_tiny_examples(10, seed=5)
    rows = [0, 3, 7, 9]
    batch = train.collate(rows)
    assert (batch["attention_mask"] == 0).any()  # some rows are padded
    padded = sketch_gradients(obj, sketch, batch)
    single = torch.cat([sketch_gradients(obj, sketch, train.collate([i])) for i in rows])
    # float64; a padded position contributes exactly zero, only the reduction shapes differ
    torch.testing.assert_close(padded, single, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("small", ["project", "exact"])
def test_damping_blocks_equal_the_dense_projection(small):
    obj = _bert("top")
    sketch = make_sketch(obj, k=7, projection="gaussian", small=small, seed=0)
    pi = sketch.project(obj, torch.eye(obj.num_params, dtype=torch.float64)).T  # (d, P): Π, column j = Π e_j
    decayed = set(obj.decayed)
    diag = torch.cat(
        [
            torch.full((p.numel(),), 0.02 if n in decayed else 0.0, dtype=torch.float64)
            for n, p in obj.params.items()
        ]
    )
    dense = (pi * diag) @ pi.T + MU * torch.eye(len(pi), dtype=torch.float64)  # μ in sketch space, Π(2wd·D)Πᵀ
    blocks = torch.zeros_like(dense)
    for lo, b in sketch.damping_blocks(obj, MU):
        blocks[lo : lo + len(b), lo : lo + len(b)] = b
    torch.testing.assert_close(blocks, dense, rtol=1e-10, atol=1e-12)


def _exact_influence(obj, train, test_batch):
    """The exact path: ``(G_N + 2wd·D + μI)⁻¹ ∇ℓ_test`` densely over all N, scored by ``score_candidates``."""
    n = len(train)
    v = test_gradient(obj, test_batch)
    s = exact_damped_solve(obj, train.collate(range(n)), v, MU, curvature="gauss_newton")
    return score_candidates(obj, s, train, range(n), batch_size=4)


def _sketch_index(obj, sketch, train, batch_size=3):
    phis, rows = [], []
    for lo in range(0, len(train), batch_size):
        phi, psi = build_rows(obj, sketch, train.collate(range(lo, min(lo + batch_size, len(train)))))
        phis.append(phi)
        rows.append(psi)
    return torch.cat(phis), torch.cat(rows)


@pytest.mark.parametrize("small", ["project", "exact"])
def test_full_dimension_orthogonal_sketch_reproduces_exact_influence(small):
    obj = _bert("top")
    train, tests = make_tiny_examples(9, seed=1), make_tiny_examples(3, seed=7)
    sketch = make_sketch(obj, k=10**6, projection="orthogonal", small=small, seed=0)
    assert sketch.dim == obj.num_params  # every factor square
    phi, rows = _sketch_index(obj, sketch, train)
    gram = GramAccumulator(sketch.dim)
    gram.add(rows)
    blocks = sketch.damping_blocks(obj, MU)
    primal = PrimalFactor.build(gram.gram, len(train), blocks)
    dual = DualFactor.build(rows, len(train), blocks)
    for t in range(len(tests)):
        batch = tests.collate([t])
        exact = _exact_influence(obj, train, batch)
        x = sketch_gradients(obj, sketch, batch)
        for factor in (primal, dual):
            got = scores(phi, factor.solve(x))[0]
            assert _rel(got, exact) < 1e-8, factor
            # preconditioned: H⁻¹φ_i kept per training example, the raw test sketch, no solve per query
            kept = torch.cat(list(preconditioned(factor, [phi[:4], phi[4:]])))
            assert _rel(scores(kept, x)[0], exact) < 1e-8, factor
        assert (exact < 0).any() and (exact > 0).any()  # both signs present: the sign is really tested


def test_dual_equals_primal_below_full_dimension_and_self_influence():
    obj = _bert("top")
    train = make_tiny_examples(8, seed=3)
    sketch = make_sketch(obj, k=6, projection="gaussian", seed=2)
    phi, rows = _sketch_index(obj, sketch, train)
    gram = GramAccumulator(sketch.dim)
    gram.add(rows)
    blocks = sketch.damping_blocks(obj, MU)
    primal, dual = PrimalFactor.build(gram.gram, 8, blocks), DualFactor.build(rows, 8, blocks)
    assert sketch.dim > rows.shape[0] * rows.shape[1]  # d > R: the dual R × R system is the smaller one
    torch.testing.assert_close(dual.solve(phi), primal.solve(phi), rtol=1e-9, atol=1e-12)
    self_p = primal.self_influence(phi)
    torch.testing.assert_close(dual.self_influence(phi), self_p, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(self_p, (primal.solve(phi) * phi).sum(1), rtol=1e-9, atol=1e-12)
    kept = list(preconditioned(dual, [phi[:5], phi[5:]]))
    torch.testing.assert_close(
        paired_self_influences([phi[:5], phi[5:]], kept), self_p, rtol=1e-9, atol=1e-12
    )
    ident = IdentityFactor()
    torch.testing.assert_close(ident.self_influence(phi), phi.pow(2).sum(1))
    values = scores(phi, ident.solve(phi[:2]))  # the first two examples on themselves: helpful (negative)
    assert values[0, 0] < 0 and values[1, 1] < 0
    rel = relative(values, ident.self_influence(phi))
    torch.testing.assert_close(rel[0, 0], -phi[0].norm().double(), rtol=1e-12, atol=0)


def test_monte_carlo_rows_are_unbiased():
    obj = _bert("top")
    train = make_tiny_examples(4, seed=3)
    sketch = make_sketch(obj, k=3, seed=0)
    batch = train.collate(range(4))
    _, exact = build_rows(obj, sketch, batch)
    want = torch.einsum("brd,bre->de", exact, exact)
    gen = torch.Generator().manual_seed(0)
    draws = 300
    got = (
        sum(
            torch.einsum("brd,bre->de", r, r)
            for _, r in (build_rows(obj, sketch, batch, "mc", gen) for _ in range(draws))
        )
        / draws
    )
    # 300 rank-1 draws per example: the Monte-Carlo error of the mean is ~1/√300 ≈ 6% of the Gram's scale
    assert _rel(got, want) < 0.2


def test_k_for_dim_matches_the_sketch_dimension():
    obj = _bert("all")
    for dim in (200, 2000):
        k = k_for_dim(obj, dim)
        d, d_next = make_sketch(obj, k).dim, make_sketch(obj, k + 1).dim
        assert d <= dim + (d_next - d) and abs(d - dim) <= abs(d_next - dim)


def test_a_stacked_sketch_equals_its_parts_and_mc_rows_from_the_jacobian_equal_a_mc_build():
    from fastif_core.engine.sketch import (
        Sketch,
        jacobian_sketches,
        model_labels,
        output_terms,
        rows_from_jacobian,
    )

    obj = _bert("top")
    a, b = (
        make_sketch(obj, k=3, seed=0),
        make_sketch(obj, k=5, projection="orthogonal", small="exact", seed=1),
    )
    batch = make_tiny_examples(5, seed=4).collate(range(5))
    both = sketch_gradients(obj, Sketch.stacked([a, b]), batch)
    alone = torch.cat([sketch_gradients(obj, a, batch), sketch_gradients(obj, b, batch)], dim=1)
    torch.testing.assert_close(both, alone, rtol=1e-12, atol=1e-14)  # the same sums, side by side
    phi, mc = build_rows(obj, b, batch, "mc", torch.Generator().manual_seed(9))
    dl, _ = output_terms(obj, batch)
    weights = model_labels(obj, batch, torch.Generator().manual_seed(9)).unsqueeze(1)
    phi_j, mc_j = rows_from_jacobian(jacobian_sketches(obj, b, batch, 3), dl, weights)
    # float64; linear combinations of per-output sketches vs the weighted backward directly
    torch.testing.assert_close(phi_j, phi, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mc_j, mc, rtol=1e-10, atol=1e-12)


def test_when_damping_dominates_the_sketch_score_is_the_sketched_dot_product_over_mu():
    """μ is damping in sketch space: for μ far above the curvature, ``μ · I_sketch → −φ_test·φ_i`` (the
    limit of the exact ``μ · I → −∇ℓ_test·∇ℓ_i``), not the rank-d projector ``Π(μI)Πᵀ`` would give."""
    obj = _bert("top")
    train = make_tiny_examples(8, seed=3)
    sketch = make_sketch(obj, k=4, projection="gaussian", seed=5)
    phi, rows = _sketch_index(obj, sketch, train)
    gram = GramAccumulator(sketch.dim)
    gram.add(rows)
    mu = 1e8
    factor = PrimalFactor.build(gram.gram, 8, sketch.damping_blocks(obj, mu))
    got = mu * scores(phi, factor.solve(phi[:3]))
    torch.testing.assert_close(got, -(phi[:3] @ phi.T), rtol=1e-5, atol=1e-10)  # curvature/μ ≈ 1e-8 relative
