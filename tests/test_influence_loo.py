"""Influence against leave-one-out retraining on a convex model (L2-regularised logistic regression).

Removing z_i from the mean objective is up-weighting it by ε = -1/N, so the first-order prediction of
the change in test loss is ``-I(z_i, z_test) / N``. The model is retrained exactly (Newton, float64)
without each removed point, independently of the engine's code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from factories import make_tiny_logistic
from torch import Tensor

from fastif_core.batches import TensorExamples
from fastif_core.config import InfluenceConfig, STestConfig
from fastif_core.hessian import exact_inverse_hvp
from fastif_core.influence import compute_influence
from fastif_core.influence import test_gradient as gradient_of_test
from fastif_core.objective import Objective, binary_cross_entropy, tensor_forward

N, D, WD = 100, 5, 0.05


def _loss(theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Mean logistic loss + WD·‖w‖² written directly (θ = (w (D,), b)), independent of the Objective."""
    z = x @ theta[:D] + theta[D]
    return F.binary_cross_entropy_with_logits(z, y.double()) + WD * theta[:D].pow(2).sum()


def _fit(x: Tensor, y: Tensor, theta: Tensor) -> Tensor:
    """Newton's method to machine precision (the objective is strictly convex)."""
    for _ in range(50):
        grad = torch.func.grad(_loss)(theta, x, y)
        if float(grad.norm()) < 1e-13:
            break
        theta = theta - torch.linalg.solve(torch.func.hessian(_loss)(theta, x, y), grad)
    return theta


def _without(train: TensorExamples, removed: list[int], theta: Tensor) -> Tensor:
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[removed] = False
    return _fit(train.x[keep], train.labels[keep], theta)


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
    return float(_loss(theta, test["x"], test["labels"]))


def _influence(obj: Objective, train: TensorExamples, test: dict[str, Tensor]):
    lissa = STestConfig(depth=5000, batch_size=N, damping=0.0, scale=0.0, tolerance=1e-12)
    return compute_influence(obj, test, train, None, InfluenceConfig(s_test=lissa, k=None, top=0))


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
