"""Ground truth for the Hessian code: HVPs against explicit Hessians, LiSSA against a dense solve."""

from __future__ import annotations

import math

import pytest
import torch
from factories import make_tiny_bert, make_tiny_examples, make_tiny_logistic
from torch import nn

from fastif_core.batches import TensorExamples
from fastif_core.config import STestConfig
from fastif_core.errors import ConfigError, LissaDivergenceError
from fastif_core.hessian import (
    HVP_METHODS,
    LissaPartial,
    estimate_scale,
    exact_hessian,
    exact_inverse_hvp,
    finish_lissa,
    hvp,
    lissa,
    lissa_repetitions,
)
from fastif_core.objective import Objective, binary_cross_entropy, classifier_objective, tensor_forward

N = 64


def _mlp_case():
    """A non-convex tanh MLP (float64, 3 classes) on random features, every parameter trainable."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    g = torch.Generator().manual_seed(1)
    batch = {
        "x": torch.randn(6, 3, generator=g, dtype=torch.float64),
        "labels": torch.tensor([0, 1, 2, 2, 1, 0]),
    }
    return Objective(model, forward=tensor_forward, weight_decay=0.05), batch


def _bert_case():
    """The tiny BERT in float64 with a LayerNorm, the pooler bias and the classifier trainable."""
    model = make_tiny_bert(0, dtype=torch.float64)
    keep = ("bert.encoder.layer.1.output.LayerNorm", "bert.pooler.dense.bias", "classifier")
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(keep))
    return classifier_objective(model, weight_decay=0.02), make_tiny_examples(4).collate(range(4))


def _logistic(wd: float = 0.01):
    model, train = make_tiny_logistic(0, n=N, d=5)
    return Objective(model, forward=tensor_forward, loss=binary_cross_entropy, weight_decay=wd), train


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("method", HVP_METHODS)
@pytest.mark.parametrize("case", [_mlp_case, _bert_case], ids=["tanh_mlp", "tiny_bert"])
def test_hvp_equals_explicit_hessian_times_v(case, method):
    obj, batch = case()
    h = exact_hessian(obj, batch)  # (P, P) from torch.func.hessian
    v = torch.randn(obj.num_params, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with obj.evaluating():
        hv = hvp(obj, batch, v, method)
    assert h.shape == (obj.num_params, obj.num_params)
    torch.testing.assert_close(hv, h @ v, rtol=1e-9, atol=1e-11)


def test_lissa_full_batch_converges_to_damped_solve():
    obj, train = _logistic()
    full = train.collate(range(N))
    lam_max = float(torch.linalg.eigvalsh(exact_hessian(obj, full))[-1])
    v = obj.grad(train.collate([0, 1]))
    cfg = STestConfig(depth=1000, batch_size=N, damping=0.01, scale=2 * lam_max)
    result = lissa(obj, v, train, cfg)
    exact = exact_inverse_hvp(obj, full, v, damping=cfg.damping * cfg.scale)
    assert _rel(result.s_test, exact) < 0.02
    assert result.depth_used == 1000 and result.rel_std is None and result.scale == cfg.scale


def test_early_stop_reports_depth_used_and_keeps_accuracy():
    obj, train = _logistic()
    full = train.collate(range(N))
    v = obj.grad(train.collate([3]))
    cfg = STestConfig(depth=5000, batch_size=N, damping=0.01, scale=5.0, tolerance=1e-9)
    result = lissa(obj, v, train, cfg)
    assert 10 < result.depth_used < 5000
    assert _rel(result.s_test, exact_inverse_hvp(obj, full, v, damping=0.05)) < 0.02


def test_automatic_scale_exceeds_largest_eigenvalue_and_converges():
    obj, train = _logistic()
    full = train.collate(range(N))
    lam_max = float(torch.linalg.eigvalsh(exact_hessian(obj, full))[-1])
    assert estimate_scale(obj, train, N, batches=1, iterations=200, safety=1.0) == pytest.approx(
        lam_max, rel=1e-2
    )
    v = obj.grad(train.collate([5]))
    result = lissa(obj, v, train, STestConfig(depth=1000, batch_size=N, damping=0.01, scale=0.0))
    assert result.scale > lam_max
    exact = exact_inverse_hvp(obj, full, v, damping=0.01 * result.scale)
    assert _rel(result.s_test, exact) < 0.02


def _single_example_scale(train: TensorExamples, wd: float = 0.01) -> float:
    """2 × a bound on every single-example Hessian's λ_max (B=1 steps must each contract).

    For logistic regression ``H_i = σ'(z_i)·x̃x̃ᵀ + 2·wd·I_w`` with ``σ' <= 1/4`` and ``x̃ = (x, 1)``.
    """
    return 2 * float(0.25 * (train.x.pow(2).sum(1) + 1).max() + 2 * wd)


def test_repetitions_reduce_the_error_of_b1_estimates_and_split_exactly():
    obj, train = _logistic()
    v = obj.grad(train.collate([7]))
    cfg = STestConfig(depth=60, batch_size=1, repeats=16, damping=0.2, scale=_single_example_scale(train))
    exact = exact_inverse_hvp(obj, train.collate(range(N)), v, damping=cfg.damping * cfg.scale)
    reps = torch.stack([lissa_repetitions(obj, v, train, cfg, [t]).total for t in range(16)])  # (T, P)
    many = lissa(obj, v, train, cfg)
    torch.testing.assert_close(many.s_test, reps.mean(0))
    # averaging T=16 unbiased B=1 estimates cuts the error (expected by 4x vs one repetition's RMS error)
    rms_one = math.sqrt(float((reps - exact).pow(2).sum(1).mean()))
    err_many = float((many.s_test - exact).norm())
    assert err_many < 0.5 * rms_one and err_many < float((reps[0] - exact).norm()), (err_many, rms_one)
    # rel_std is the spread of the individual repetition estimates around their mean
    spread = math.sqrt(float((reps - reps.mean(0)).pow(2).sum(1).mean())) / float(reps.mean(0).norm())
    assert many.rel_std == pytest.approx(spread, rel=1e-6) and sorted(many.depths) == list(range(16))
    # a split across two "ranks" (t even / t odd) summed as one flat vector gives the serial result
    even, odd = (lissa_repetitions(obj, v, train, cfg, range(r, 16, 2)) for r in (0, 1))
    summed = LissaPartial.from_flat(even.to_flat() + odd.to_flat(), cfg.scale, {**even.depths, **odd.depths})
    for partial in (summed, even.merge(odd)):
        split = finish_lissa(partial, cfg)
        torch.testing.assert_close(split.s_test, many.s_test, rtol=1e-12, atol=1e-14)
        assert split.rel_std == pytest.approx(many.rel_std, rel=1e-6) and split.depths == many.depths


def test_divergence_raises_with_step_norm_and_scale_advice():
    obj, train = _logistic()
    lam_max = float(torch.linalg.eigvalsh(exact_hessian(obj, train.collate(range(N))))[-1])
    v = obj.grad(train.collate([0]))
    cfg = STestConfig(depth=1000, batch_size=N, damping=0.0, scale=0.05 * lam_max)
    with pytest.raises(
        LissaDivergenceError, match=r"diverged at step \d+/1000 of repetition 0.*larger scale"
    ):
        lissa(obj, v, train, cfg)
    with pytest.raises(LissaDivergenceError, match="nan"):
        lissa(obj, torch.full_like(v, float("nan")), train, STestConfig(depth=5, batch_size=N, scale=10.0))


def test_bad_settings_raise_config_errors():
    obj, train = _logistic()
    v = obj.grad(train.collate([0]))
    with pytest.raises(ConfigError, match="depth"):
        lissa(obj, v, train, STestConfig(depth=0))
    with pytest.raises(ConfigError, match="damping"):
        lissa(obj, v, train, STestConfig(damping=1.5))
    with pytest.raises(ConfigError, match="method"):
        hvp(obj, train.collate([0]), v, "finite_differences")
    with pytest.raises(ConfigError, match="repetitions"):
        finish_lissa(lissa_repetitions(obj, v, train, STestConfig(depth=3, scale=10.0), []), STestConfig())


def test_progress_reports_increasing_fractions_up_to_one():
    obj, train = _logistic()
    seen: list[float] = []
    cfg = STestConfig(depth=50, batch_size=4, repeats=3, scale=10.0)
    lissa(obj, obj.grad(train.collate([0])), train, cfg, progress=lambda f, msg: seen.append(f))
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0) and len(seen) >= 3
