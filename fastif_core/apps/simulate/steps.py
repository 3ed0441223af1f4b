"""The simulatability measurement: one SGD step of the simulator on an explanation example, then the
simulator's loss on the test input (tensors in, tensors out; no I/O).

For an explanation example e with gold label y_e and a learning rate η, the step is
``θ' = θ − η·∇ℓ(f_θ(x_e), y_e)`` and the measurement is ``ℓ(f_θ'(x_test), ŷ_test)``, ŷ_test being the task
model's prediction. A single SGD step's update is ``−η·g_e`` for every η, so :func:`losses_after_step`
takes one gradient per explanation example and evaluates every learning rate of the grid from it, in
chunks of stacked parameters (``torch.func.vmap`` over ``functional_call``); the simulator's weights are
never written. :func:`losses_after_step_reference` is the naive loop the shortcut must equal: a real
``torch.optim.SGD`` step on the model for every (example, learning rate), the test loss, and the weights
restored from a copy after every step.

The losses are the data loss only (no L2 term) in eval mode (no dropout), with the objective's loss
function (two-way aware cross-entropy in a workspace).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from fastif_core.engine.examples import Batch, Examples, to_device
from fastif_core.engine.objective import Objective

StepCount = Callable[[int, int], None]  # (explanation examples done, total)


def test_loss(objective: Objective, test_batch: Batch) -> Tensor:
    """The simulator's loss ``()`` on the (one-row) test batch before any step."""
    batch = to_device(test_batch, objective.device)
    with objective.evaluating(), torch.no_grad():
        return objective.data_loss(objective.params, batch).mean()


test_loss.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported into one


def explanation_gradient(objective: Objective, train: Examples, position: int) -> Tensor:
    """``∇ℓ(f_θ(x_e), y_e)`` ``(P,)`` of one training example (its gold label), eval mode."""
    with objective.evaluating():
        return objective.grad(train.collate([int(position)]), include_l2=False)


def losses_for_gradient(
    objective: Objective, grad: Tensor, lrs: Tensor, test_batch: Batch, chunk: int = 10
) -> Tensor:
    """Test losses ``(L,)`` after the step ``θ − lr·grad`` for every ``lr`` of ``lrs`` ``(L,)``, ``chunk``
    learning rates per batched forward (memory O(chunk × P))."""
    params, g = objective.params, objective.unflatten(grad.to(objective.device, objective.dtype))
    batch = to_device(test_batch, objective.device)

    def loss_at(lr: Tensor) -> Tensor:
        stepped = {n: params[n] - lr * g[n] for n in params}
        return objective.data_loss(stepped, batch).mean()

    lrs = lrs.to(objective.device, objective.dtype)
    with objective.evaluating(), torch.no_grad():
        return torch.cat([torch.func.vmap(loss_at)(part) for part in torch.split(lrs, chunk)])


def losses_after_step(
    objective: Objective,
    train: Examples,
    positions: Sequence[int],
    lrs: Tensor,
    test_batch: Batch,
    chunk: int = 10,
    progress: StepCount | None = None,
) -> Tensor:
    """Test losses ``(E, L)`` after one SGD step on ``train[positions[e]]`` with learning rate ``lrs[l]``:
    one gradient per explanation example, every learning rate from it."""
    out = torch.empty(len(positions), len(lrs), dtype=objective.dtype, device=objective.device)
    for e, pos in enumerate(positions):
        out[e] = losses_for_gradient(
            objective, explanation_gradient(objective, train, pos), lrs, test_batch, chunk
        )
        if progress is not None:
            progress(e + 1, len(positions))
    return out


def losses_after_step_reference(
    objective: Objective, train: Examples, positions: Sequence[int], lrs: Tensor, test_batch: Batch
) -> Tensor:
    """The naive loop: for every (example, lr) a real ``torch.optim.SGD`` step on the model's weights, the
    test loss, then the weights restored from a copy (the model ends bit-identical to how it started)."""
    wanted = set(objective.names)
    live = {n: p for n, p in objective.model.named_parameters() if n in wanted}
    saved = {n: p.detach().clone() for n, p in live.items()}
    batch = to_device(test_batch, objective.device)
    out = torch.empty(len(positions), len(lrs), dtype=objective.dtype, device=objective.device)
    with objective.evaluating():
        for e, pos in enumerate(positions):
            step_batch = to_device(train.collate([int(pos)]), objective.device)
            for j, lr in enumerate(lrs.tolist()):
                opt = torch.optim.SGD(list(live.values()), lr=lr)
                opt.zero_grad(set_to_none=True)
                objective.data_loss(live, step_batch).mean().backward()
                opt.step()
                with torch.no_grad():
                    out[e, j] = objective.data_loss(objective.params, batch).mean()
                    for n, p in live.items():
                        p.copy_(saved[n])
                        p.grad = None
    return out
