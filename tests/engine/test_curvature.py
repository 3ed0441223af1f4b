"""Ground truth for the curvature products: HVPs against explicit Hessians, Gauss-Newton products against
the Jacobian-based Gauss-Newton matrix and the analytic cross-entropy output Hessian."""

from __future__ import annotations

import pytest
import torch
from factories import make_tiny_bert, make_tiny_examples, make_tiny_logistic
from torch import nn

from fastif_core.engine.curvature import (
    HVP_METHODS,
    curvature_vp,
    estimate_scale,
    exact_gauss_newton,
    exact_hessian,
    gnvp,
    hvp,
    output_hessians,
)
from fastif_core.engine.objective import Objective, binary_cross_entropy, classifier_objective, tensor_forward
from fastif_core.errors import ConfigError
from fastif_core.workspace.layout import two_way_aware_cross_entropy

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


@pytest.mark.parametrize("case", [_mlp_case, _bert_case], ids=["tanh_mlp", "tiny_bert"])
def test_gnvp_equals_jacobian_gauss_newton_times_v(case):
    obj, batch = case()
    g = exact_gauss_newton(obj, batch)  # (P, P) from the output Jacobian
    v = torch.randn(obj.num_params, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with obj.evaluating():
        gv = gnvp(obj, batch, v)
        assert torch.equal(curvature_vp(obj, batch, v, "gauss_newton"), gv)
    torch.testing.assert_close(gv, g @ v, rtol=1e-9, atol=1e-11)
    assert float(torch.linalg.eigvalsh(g)[0]) > -1e-10  # positive semi-definite by construction
    assert float(torch.linalg.eigvalsh(exact_hessian(obj, batch))[0]) < -1e-6  # unlike the Hessian here


def test_cross_entropy_output_hessian_is_softmax_covariance():
    obj, _ = _mlp_case()
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    p = logits.softmax(-1)
    expected = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)  # diag(p) - ppᵀ per example
    torch.testing.assert_close(output_hessians(obj, logits, torch.tensor([0, 1, 2, 0, 1])), expected)


def test_two_way_output_hessian_is_projected_to_psd():
    """-log(p_n + p_c) is not convex in the logits: its raw Hessian has a negative eigenvalue somewhere."""
    obj, _ = _mlp_case()
    obj.loss = two_way_aware_cross_entropy
    logits = torch.tensor([[0.0, 3.0, -3.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([3, 3])  # the merged "non-entailment" index
    raw = torch.stack(
        [
            torch.func.hessian(lambda z: two_way_aware_cross_entropy(z[None], labels[:1]).sum())(row)
            for row in logits
        ]
    )
    assert float(torch.linalg.eigvalsh(raw).min()) < -1e-3
    q = output_hessians(obj, logits, labels)
    evals_raw, evecs = torch.linalg.eigh(raw)
    torch.testing.assert_close(q, evecs @ torch.diag_embed(evals_raw.clamp(min=0)) @ evecs.transpose(1, 2))


def test_gauss_newton_equals_hessian_for_a_linear_model():
    """Logistic regression is linear in its parameters, so J has no curvature and G = H exactly."""
    obj, train = _logistic()
    batch = train.collate(range(N))
    torch.testing.assert_close(
        exact_gauss_newton(obj, batch), exact_hessian(obj, batch), rtol=1e-10, atol=1e-12
    )


def test_automatic_scale_matches_the_largest_eigenvalue():
    obj, train = _logistic()
    full = train.collate(range(N))
    lam_max = float(torch.linalg.eigvalsh(exact_hessian(obj, full))[-1])
    assert estimate_scale(obj, train, N, batches=1, iterations=200, safety=1.0) == pytest.approx(
        lam_max, rel=1e-2
    )
    assert estimate_scale(obj, train, N, batches=1, iterations=200, safety=1.0, curvature="gauss_newton") == (
        pytest.approx(lam_max, rel=1e-2)
    )


def test_bad_hvp_settings_raise_config_errors():
    obj, train = _logistic()
    v = obj.grad(train.collate([0]))
    with pytest.raises(ConfigError, match="method"):
        hvp(obj, train.collate([0]), v, "finite_differences")
    with pytest.raises(ConfigError, match="curvature"):
        curvature_vp(obj, train.collate([0]), v, "fisher")
