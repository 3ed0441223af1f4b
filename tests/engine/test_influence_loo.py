"""Influence against leave-one-out retraining on a convex model (L2-regularised logistic regression).

Removing z_i from the mean objective is up-weighting it by ε = -1/N, so the first-order prediction of
the change in test loss is ``-I(z_i, z_test) / N``. The model is retrained exactly (Newton, float64)
without each removed point, independently of the engine's code. The natural definition: remove z_i's
loss term, keep the regulariser, retrain; the test loss is the data loss of the test point alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from factories import make_tiny_logistic
from torch import Tensor

from fastif_core.config import InfluenceConfig, STestConfig
from fastif_core.engine.curvature import exact_inverse_hvp
from fastif_core.engine.examples import TensorExamples
from fastif_core.engine.influence import compute_influence
from fastif_core.engine.influence import test_gradient as gradient_of_test
from fastif_core.engine.objective import Objective, binary_cross_entropy, tensor_forward

N, D, WD = 100, 5, 0.05


def _loss(theta: Tensor, x: Tensor, y: Tensor, n: int | None = None) -> Tensor:
    """``(1/n)·Σ logistic losses + WD·‖w‖²`` written directly (θ = (w (D,), b)), independent of the
    Objective; n defaults to the number of rows (the training objective's mean)."""
    z = x @ theta[:D] + theta[D]
    total = F.binary_cross_entropy_with_logits(z, y.double(), reduction="sum")
    return total / (n or len(y)) + WD * theta[:D].pow(2).sum()


def _fit(x: Tensor, y: Tensor, theta: Tensor, n: int | None = None) -> Tensor:
    """Newton's method to machine precision (the objective is strictly convex)."""
    for _ in range(50):
        grad = torch.func.grad(_loss)(theta, x, y, n)
        if float(grad.norm()) < 1e-13:
            break
        theta = theta - torch.linalg.solve(torch.func.hessian(_loss)(theta, x, y, n), grad)
    return theta


def _without(train: TensorExamples, removed: list[int], theta: Tensor) -> Tensor:
    """Retrained without the removed points' loss terms, the regulariser kept: ``(1/N)·Σ_{j∉removed} ℓ_j
    + WD·‖w‖²`` (the natural leave-one-out, i.e. up-weighting by ε = -1/N exactly)."""
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[removed] = False
    return _fit(train.x[keep], train.labels[keep], theta, n=len(train))


def _setup():
    """Trained model, its objective, the training set, and the worst-predicted of 20 fresh test points."""
    model, train = make_tiny_logistic(seed=1, n=N, d=D)
    theta = _fit(train.x, train.labels, torch.zeros(D + 1, dtype=torch.float64))
    with torch.no_grad():
        model.weight.copy_(theta[:D].view(1, D))
        model.bias.copy_(theta[D:])
    obj = Objective(model, forward=tensor_forward, loss=binary_cross_entropy, weight_decay=WD)
    _, pool = make_tiny_logistic(seed=2, n=20, d=D)
    worst = int(obj.per_example_loss(obj.params, pool.collate(range(20))).argmax())
    return obj, train, theta, pool.collate([worst])


def _test_loss(theta: Tensor, test: dict[str, Tensor]) -> float:
    """The test point's data loss (no regulariser: the test loss of the influence definition)."""
    z = test["x"] @ theta[:D] + theta[D]
    return float(F.binary_cross_entropy_with_logits(z, test["labels"].double()))


def _influence(obj: Objective, train: TensorExamples, test: dict[str, Tensor], gradient_l2: str = "none"):
    lissa = STestConfig(depth=5000, batch_size=N, damping=0.0, scale=0.0, tolerance=1e-12)
    cfg = InfluenceConfig(s_test=lissa, k=None, top=0, gradient_l2=gradient_l2)
    return compute_influence(obj, test, train, None, cfg)


def test_influence_predicts_leave_one_out_retraining():
    obj, train, theta, test = _setup()
    result = _influence(obj, train, test)
    assert result.s_test_stats["depth_used"] < 5000  # converged and stopped early
    exact = exact_inverse_hvp(obj, train.collate(range(N)), gradient_of_test(obj, test), damping=0.0)
    torch.testing.assert_close(result.s_test, exact, rtol=1e-8, atol=1e-10)
    removed = torch.randperm(N, generator=torch.Generator().manual_seed(0))[:20].tolist()
    base = _test_loss(theta, test)
    actual = torch.tensor([_test_loss(_without(train, [i], theta), test) - base for i in removed])
    predicted = -result.values[removed] / N
    pearson = float(torch.corrcoef(torch.stack([predicted, actual]))[0, 1])
    assert pearson >= 0.95, pearson


def test_removing_harmful_lowers_and_removing_helpful_raises_the_test_loss():
    obj, train, theta, test = _setup()
    result = _influence(obj, train, test)
    base = _test_loss(theta, test)
    harmful = result.harmful(10)[0].tolist()
    helpful = result.helpful(10)[0].tolist()
    gen = torch.Generator().manual_seed(1)
    randoms = [torch.randperm(N, generator=gen)[:10].tolist() for _ in range(5)]
    delta_harmful = _test_loss(_without(train, harmful, theta), test) - base
    delta_helpful = _test_loss(_without(train, helpful, theta), test) - base
    delta_random = sum(_test_loss(_without(train, r, theta), test) - base for r in randoms) / len(randoms)
    assert delta_harmful < 0 and delta_harmful < delta_random
    assert delta_helpful > 0 and delta_helpful > delta_random


def test_data_only_gradients_predict_leave_one_out_best():
    """Each L2 convention's prediction against the actual change: the default (none) predicts it in sign,
    rank and size; test_and_train (FastIF's code) is worse; train shifts every prediction by rᵀs_test."""
    obj, train, theta, test = _setup()
    removed = torch.randperm(N, generator=torch.Generator().manual_seed(0))[:25].tolist()
    base = _test_loss(theta, test)
    actual = torch.tensor([_test_loss(_without(train, [i], theta), test) - base for i in removed])
    scores = {}
    for conv in ("none", "train", "test_and_train"):
        predicted = -_influence(obj, train, test, conv).values[removed] / N
        pearson = float(torch.corrcoef(torch.stack([predicted, actual]))[0, 1])
        scores[conv] = (pearson, float((predicted - actual).norm() / actual.norm()))
    assert scores["none"][0] >= 0.95 and scores["none"][1] < 0.1, scores
    assert (
        scores["none"][0] > scores["test_and_train"][0] and scores["none"][1] < scores["test_and_train"][1]
    ), scores
    assert scores["none"][1] < scores["train"][1], scores


def test_test_gradient_is_the_data_loss_gradient_written_by_hand():
    """The test gradient against autograd of the loss written directly (not through the Objective)."""
    obj, _, theta, test = _setup()
    x, y = test["x"], test["labels"].double()
    by_hand = torch.func.grad(lambda t: F.binary_cross_entropy_with_logits(x @ t[:D] + t[D], y))(theta)
    torch.testing.assert_close(gradient_of_test(obj, test), by_hand, rtol=1e-10, atol=1e-12)
    with_l2 = torch.func.grad(lambda t: _loss(t, x, test["labels"]))(theta)
    torch.testing.assert_close(gradient_of_test(obj, test, include_l2=True), with_l2, rtol=1e-10, atol=1e-12)
