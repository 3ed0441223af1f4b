"""Ground truth for the s_test solvers: LiSSA and conjugate gradient against dense damped solves on tiny
float64 models, their stopping rules, their refusals (divergence, non-positive curvature, non-finite input)
and the split of repetitions across ranks."""

from __future__ import annotations

import math

import pytest
import torch
from factories import make_tiny_bert, make_tiny_examples, make_tiny_logistic
from torch import nn

from fastif_core.config import STestConfig
from fastif_core.engine.curvature import exact_damped_solve, exact_hessian
from fastif_core.engine.examples import TensorExamples, sample_indices
from fastif_core.engine.objective import Objective, binary_cross_entropy, classifier_objective, tensor_forward
from fastif_core.engine.solvers import STestPartial, finish, resolve, solve, solve_repetitions
from fastif_core.errors import ConfigError, CurvatureBreakdownError, LissaDivergenceError

N = 64


def _logistic(wd: float = 0.01):
    model, train = make_tiny_logistic(0, n=N, d=5)
    return Objective(model, forward=tensor_forward, loss=binary_cross_entropy, weight_decay=wd), train


def _bert(n: int = 6):
    """The tiny BERT in float64 with its last layer's output block, the pooler and the classifier trainable."""
    model = make_tiny_bert(0, dtype=torch.float64)
    keep = ("bert.encoder.layer.1.output", "bert.pooler", "classifier")
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(keep))
    return classifier_objective(model, weight_decay=0.01), make_tiny_examples(n)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _lam_max(obj, batch) -> float:
    return float(torch.linalg.eigvalsh(exact_hessian(obj, batch))[-1])


# ------------------------------------------------------------------------------------------------ LiSSA
def test_lissa_full_batch_converges_to_damped_solve():
    obj, train = _logistic()
    full = train.collate(range(N))
    v = obj.grad(train.collate([0, 1]))
    cfg = STestConfig(depth=3000, batch_size=N, damping=0.01, scale=2 * _lam_max(obj, full))
    result = solve(obj, v, train, cfg)
    exact = exact_damped_solve(obj, full, v, damping=cfg.damping * cfg.scale)
    assert _rel(result.s_test, exact) < 1e-3
    assert result.depth_used == 3000 and result.rel_std is None and result.scale == cfg.scale
    assert result.stats()["solver"] == "lissa" and result.stats()["hvps"] == 3000


def test_lissa_early_stop_reports_depth_used_and_keeps_accuracy():
    obj, train = _logistic()
    full = train.collate(range(N))
    v = obj.grad(train.collate([3]))
    cfg = STestConfig(depth=5000, batch_size=N, damping=0.01, scale=5.0, tolerance=1e-9)
    result = solve(obj, v, train, cfg)
    assert 10 < result.depth_used < 5000 and result.stats()["converged"] is True
    assert _rel(result.s_test, exact_damped_solve(obj, full, v, damping=0.05)) < 1e-3


def test_mu_with_estimated_scale_solves_the_same_system():
    """mu fixes μ: the scale is estimated by power iteration and d = μ/s, so the target stays (H + μI)⁻¹v."""
    obj, train = _logistic()
    full = train.collate(range(N))
    v = obj.grad(train.collate([5]))
    cfg = STestConfig(depth=4000, batch_size=N, scale=0.0, mu=0.05, tolerance=1e-10)
    result = solve(obj, v, train, cfg)
    assert result.scale > _lam_max(obj, full) * 0.9 and result.damping == pytest.approx(0.05 / result.scale)
    assert result.stats()["effective_damping"] == pytest.approx(0.05)
    assert result.scale_hvps > 0 and result.hvps == result.depth_used + result.scale_hvps
    assert _rel(result.s_test, exact_damped_solve(obj, full, v, damping=0.05)) < 1e-3
    again = solve(obj, v, train, cfg)  # the scale is cached on the objective: no second power iteration
    assert again.scale_hvps == 0 and again.scale == result.scale


def _single_example_scale(train: TensorExamples, wd: float = 0.01) -> float:
    """2 × a bound on every single-example Hessian's λ_max (B=1 steps must each contract).

    For logistic regression ``H_i = σ'(z_i)·x̃x̃ᵀ + 2·wd·I_w`` with ``σ' <= 1/4`` and ``x̃ = (x, 1)``.
    """
    return 2 * float(0.25 * (train.x.pow(2).sum(1) + 1).max() + 2 * wd)


def test_window_mean_stops_under_step_noise_and_beats_the_last_iterate():
    """At B=1 every step is noisy; block means of the iterates settle (the run stops early), and the tail
    average is closer to the fixed point than the noisy last iterate of a plain run of the same depth."""
    obj, train = _logistic()
    v = obj.grad(train.collate([7]))
    scale = _single_example_scale(train)
    exact = exact_damped_solve(obj, train.collate(range(N)), v, damping=0.2 * scale)
    base = {"depth": 400, "batch_size": 1, "damping": 0.2, "scale": scale}
    win = solve(obj, v, train, STestConfig(**base, repeats=2, tolerance=0.05, window=40))
    assert win.depth_used < 400 and win.stats()["converged"] is True and win.stats()["change"] <= 0.05
    base["depth"] = 200
    plain = [_rel(solve(obj, v, train, STestConfig(**base, seed=s)).s_test, exact) for s in range(3)]
    tail = [
        _rel(solve(obj, v, train, STestConfig(**base, window=40, seed=s)).s_test, exact) for s in range(3)
    ]
    errors_plain, errors_win = plain, tail
    assert sum(errors_win) < 0.7 * sum(errors_plain), (errors_win, errors_plain)


def test_repetitions_reduce_the_error_of_b1_estimates_and_split_exactly():
    obj, train = _logistic()
    v = obj.grad(train.collate([7]))
    cfg = STestConfig(depth=60, batch_size=1, repeats=16, damping=0.2, scale=_single_example_scale(train))
    exact = exact_damped_solve(obj, train.collate(range(N)), v, damping=cfg.damping * cfg.scale)
    reps = torch.stack([solve_repetitions(obj, v, train, cfg, [t]).total for t in range(16)])  # (T, P)
    many = solve(obj, v, train, cfg)
    torch.testing.assert_close(many.s_test, reps.mean(0))
    rms_one = math.sqrt(float((reps - exact).pow(2).sum(1).mean()))
    err_many = float((many.s_test - exact).norm())
    assert err_many < 0.5 * rms_one and err_many < float((reps[0] - exact).norm()), (err_many, rms_one)
    spread = math.sqrt(float((reps - reps.mean(0)).pow(2).sum(1).mean())) / float(reps.mean(0).norm())
    assert many.rel_std == pytest.approx(spread, rel=1e-6)
    # no tolerance: every one of the 16 repetitions (keys 0..15) ran the configured depth, no more, no less
    assert many.depths == dict.fromkeys(range(16), cfg.depth) and many.hvps == 16 * cfg.depth
    even, odd = (solve_repetitions(obj, v, train, cfg, range(r, 16, 2)) for r in (0, 1))
    summed = STestPartial.from_flat(even.to_flat() + odd.to_flat(), cfg.scale, {**even.reps, **odd.reps})
    for partial in (summed, even.merge(odd)):
        split = finish(partial, cfg)
        torch.testing.assert_close(split.s_test, many.s_test, rtol=1e-12, atol=1e-14)
        assert split.rel_std == pytest.approx(many.rel_std, rel=1e-6) and split.depths == many.depths


def test_lissa_divergence_raises_with_step_norm_and_scale_advice():
    obj, train = _logistic()
    lam_max = _lam_max(obj, train.collate(range(N)))
    v = obj.grad(train.collate([0]))
    cfg = STestConfig(depth=1000, batch_size=N, damping=0.0, scale=0.05 * lam_max)
    with pytest.raises(
        LissaDivergenceError, match=r"diverged at step \d+/1000 of repetition 0.*larger scale"
    ):
        solve(obj, v, train, cfg)
    with pytest.raises(LissaDivergenceError, match="nan"):
        solve(obj, torch.full_like(v, float("nan")), train, STestConfig(depth=5, batch_size=N, scale=10.0))


# --------------------------------------------------------------------------------------------------- CG
@pytest.mark.parametrize("curvature", ["hessian", "gauss_newton"])
def test_cg_converges_to_the_damped_solve_of_its_batch(curvature):
    """Logistic regression: H = G is positive definite; CG reaches the dense solve in <= P iterations."""
    obj, train = _logistic()
    v = obj.grad(train.collate([2]))
    cfg = STestConfig(solver="cg", curvature=curvature, depth=50, batch_size=N, mu=0.05, tolerance=1e-10)
    result = solve(obj, v, train, cfg)
    exact = exact_damped_solve(obj, train.collate(range(N)), v, damping=0.05, curvature=curvature)
    assert _rel(result.s_test, exact) < 1e-6
    stats = result.stats()
    assert stats["solver"] == "cg" and stats["converged"] is True and stats["residual"] <= 1e-10
    assert stats["hvps"] == result.depth_used <= obj.num_params + 1


def test_gauss_newton_cg_on_a_transformer_matches_the_dense_solve():
    """The tiny BERT (all parameters, indefinite Hessian): GN + μI is positive definite, CG converges."""
    obj, train = _bert()
    batch_rows = sample_indices(len(train), 4, torch.Generator().manual_seed(0))
    v = obj.grad(train.collate([5]), include_l2=False)
    cfg = STestConfig(solver="cg", curvature="gauss_newton", depth=400, batch_size=4, mu=0.1, tolerance=1e-9)
    result = solve(obj, v, train, cfg)
    exact = exact_damped_solve(obj, train.collate(batch_rows), v, damping=0.1, curvature="gauss_newton")
    assert _rel(result.s_test, exact) < 1e-3 and result.stats()["converged"] is True


def test_cg_refuses_negative_curvature_with_advice():
    """A direction of negative curvature of H_b + μI stops CG with an error instead of a wrong answer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    g = torch.Generator().manual_seed(1)
    train = TensorExamples(
        torch.randn(6, 3, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 2, 1, 0])
    )
    obj = Objective(model, forward=tensor_forward, weight_decay=0.0)
    evals, evecs = torch.linalg.eigh(exact_hessian(obj, train.collate(range(6))))
    assert float(evals[0]) < -1e-3
    cfg = STestConfig(solver="cg", depth=20, batch_size=6, mu=1e-4, tolerance=1e-8)
    with pytest.raises(CurvatureBreakdownError, match="non-positive curvature.*gauss_newton"):
        solve(obj, evecs[:, 0].clone(), train, cfg)
    gn = solve(obj, evecs[:, 0].clone(), train, STestConfig(**{**cfg.__dict__, "curvature": "gauss_newton"}))
    assert torch.isfinite(gn.s_test).all() and gn.stats()["converged"] is True


def test_cg_refuses_non_finite_input():
    obj, train = _logistic()
    v = torch.full((obj.num_params,), float("inf"), dtype=torch.float64)
    with pytest.raises(LissaDivergenceError, match="not finite"):
        solve(obj, v, train, STestConfig(solver="cg", batch_size=N, mu=0.1))


def test_cg_repetitions_average_their_batches():
    obj, train = _logistic()
    v = obj.grad(train.collate([4]))
    cfg = STestConfig(solver="cg", depth=40, batch_size=8, repeats=3, mu=0.1, tolerance=1e-10)
    single = [
        solve(obj, v, train, STestConfig(**{**cfg.__dict__, "repeats": 1, "seed": t})).s_test
        for t in range(3)
    ]
    torch.testing.assert_close(solve(obj, v, train, cfg).s_test, torch.stack(single).mean(0))


# ---------------------------------------------------------------------------------------------- settings
def test_bad_settings_raise_config_errors():
    obj, train = _logistic()
    v = obj.grad(train.collate([0]))
    for bad, field in [
        ({"depth": 0}, "depth"),
        ({"damping": 1.5}, "damping"),
        ({"solver": "newton"}, "solver"),
        ({"curvature": "fisher"}, "curvature"),
        ({"window": -1}, "window"),
        ({"solver": "cg", "scale": 0.0}, "scale"),
    ]:
        with pytest.raises(ConfigError, match=field):
            solve(obj, v, train, STestConfig(**bad))
    with pytest.raises(ConfigError, match="mu=.*below the LiSSA scale"):
        resolve(obj, train, STestConfig(mu=50.0, scale=10.0))
    with pytest.raises(ConfigError, match="repetitions"):
        finish(solve_repetitions(obj, v, train, STestConfig(depth=3, scale=10.0), []), STestConfig())


def test_progress_reports_increasing_fractions_up_to_one():
    obj, train = _logistic()
    for cfg in (
        STestConfig(depth=50, batch_size=4, repeats=3, scale=10.0),
        STestConfig(solver="cg", depth=50, batch_size=8, repeats=2, mu=0.1, tolerance=1e-8),
    ):
        seen: list[float] = []
        solve(
            obj, obj.grad(train.collate([0])), train, cfg, progress=lambda f, msg, seen=seen: seen.append(f)
        )
        assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0) and len(seen) >= 2


def test_sample_indices_are_distinct_seeded_and_cover_the_set():
    a = sample_indices(100_000, 16, torch.Generator().manual_seed(3))
    assert len(set(a)) == 16 and all(0 <= i < 100_000 for i in a)
    assert a == sample_indices(100_000, 16, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(0)
    counts = torch.bincount(
        torch.tensor([i for _ in range(2000) for i in sample_indices(50, 5, gen)]), minlength=50
    )
    assert int(counts.min()) > 120 and int(counts.max()) < 280  # uniform: 200 expected per row
    assert sorted(sample_indices(10, 10, gen)) == list(range(10))
