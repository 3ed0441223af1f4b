"""The damped Gauss-Newton system on one batch, solved exactly by the Woodbury identity (tensors only).

On a batch of B examples with C outputs the Gauss-Newton curvature of :mod:`fastif_core.hessian` is

    G_b + μI = A + KᵀK,    A = μI + 2·wd·I_decayed (diagonal),    K = stack_i Q_i^{1/2} J_i / √B  (R, P)

with ``J_i`` the Jacobian of example i's outputs and ``Q_i`` the (PSD-projected) Hessian of its loss w.r.t.
them. K has at most B·C rows (R = 2B for softmax cross-entropy over 3 classes: ``Q_i`` has rank C − 1), so

    (A + KᵀK)⁻¹ v = A⁻¹v − A⁻¹Kᵀ (I + K A⁻¹ Kᵀ)⁻¹ K A⁻¹ v

needs one R × R Cholesky factor. Building it costs R/B batched backward passes with per-example hooks
(:func:`fastif_core.per_example.per_example_output_gradients`) and one ``R × R`` Gram product; every solve
after that is two products with K, for one vector or for M at once. The answer is the fixed point that
conjugate gradient on the same batch approaches (``solver=cg``, ``curvature=gauss_newton``), without
iterations or a tolerance. Memory: K itself, ``R × P`` floats (about 5.5 GB for B=64 on MiniLM's 10.8M
trainable parameters, in float32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fastif_core.batches import Batch
from fastif_core.hessian import output_hessians
from fastif_core.objective import Objective
from fastif_core.per_example import per_example_output_gradients

_COLUMNS = 1 << 20  # parameters per block of the Gram product (memory: R × this, one block at a time)


@dataclass(frozen=True)
class GaussNewtonFactor:
    """``(A + KᵀK)`` on one batch, factored: solves and residuals for one vector or many."""

    rows: Tensor  # K (R, P)
    a_inv: Tensor  # (P,) the inverse of the diagonal A
    chol: Tensor  # (R, R) float64 lower Cholesky factor of I + K A⁻¹ Kᵀ
    passes: int  # batched backward passes that built K (one per kept output direction)

    def solve(self, v: Tensor, refine: int = 1) -> Tensor:
        """``(A + KᵀK)⁻¹ v`` for ``v (P,)`` or ``(M, P)`` (rows are right-hand sides); same shape back.

        ``refine`` steps of iterative refinement (``x += solve(v − (A + KᵀK)x)``, four products with K
        each) remove the rounding of the float32 Gram product: the residual drops from about 1e-4 to the
        precision of :meth:`apply`."""
        x = self._solve_once(v)
        for _ in range(refine):
            x = x + self._solve_once(v.to(self.rows.dtype) - self.apply(x))
        return x

    def _solve_once(self, v: Tensor) -> Tensor:
        vs = v.reshape(-1, v.shape[-1]).to(self.rows.dtype)  # (M, P)
        y = vs * self.a_inv  # A⁻¹V
        z = (y @ self.rows.T).double()  # (M, R): K A⁻¹ V
        w = torch.cholesky_solve(z.T, self.chol).T.to(self.rows.dtype)  # (M, R)
        x = y - (w @ self.rows) * self.a_inv
        return x.reshape(v.shape)

    def apply(self, x: Tensor) -> Tensor:
        """``(A + KᵀK) x`` for ``x (P,)`` or ``(M, P)``: the system itself, for residual checks."""
        xs = x.reshape(-1, x.shape[-1]).to(self.rows.dtype)
        return (xs / self.a_inv + (xs @ self.rows.T) @ self.rows).reshape(x.shape)

    def residual(self, x: Tensor, v: Tensor) -> Tensor:
        """Relative residual ``‖(A + KᵀK)x − v‖ / ‖v‖`` per right-hand side: ``()`` or ``(M,)``."""
        r = self.apply(x) - v.to(self.rows.dtype)
        return r.norm(dim=-1) / v.norm(dim=-1).clamp_min(1e-30)


def damping_diagonal(objective: Objective, mu: float) -> Tensor:
    """``A = μ + 2·wd`` on decayed parameters, ``μ`` elsewhere: ``(P,)`` (the L2 term's Hessian diagonal)."""
    ones = torch.ones(objective.num_params, dtype=objective.dtype, device=objective.device)
    return mu + objective.flatten(objective.regularizer_hvp(objective.unflatten(ones)))


def output_loss_roots(objective: Objective, batch: Batch) -> Tensor:
    """``Q_i^{1/2}`` rows scaled by ``1/√B``, directions with no curvature anywhere in the batch dropped:
    ``(R/B, B, C)``, one ``(B, C)`` weighting per kept direction."""
    with torch.no_grad():
        outputs = objective.outputs(objective.params, batch)
    q = output_hessians(objective, outputs, batch["labels"])  # (B, C, C), PSD
    evals, evecs = torch.linalg.eigh(q)  # ascending; (B, C), (B, C, C)
    evals = evals.clamp(min=0.0)
    keep = evals.amax(dim=0) > 1e-10 * float(evals.max().clamp_min(1e-30))  # (C,)
    b = outputs.shape[0]
    # row r of Q_i^{1/2} restricted to eigen-direction r: sqrt(λ_ir) u_irᵀ, so that Σ_r (·)ᵀ(·) = Q_i
    roots = (evecs * evals.sqrt().unsqueeze(1)).transpose(1, 2)  # (B, C, C): [i, r, :] = √λ_ir u_ir
    return roots[:, keep, :].permute(1, 0, 2) / b**0.5  # (R/B, B, C)


def factor(objective: Objective, batch: Batch, mu: float) -> GaussNewtonFactor:
    """The factor of ``G_b + μI`` on ``batch`` (on the objective's device; callers run inside
    ``objective.evaluating()``)."""
    weights = output_loss_roots(objective, batch)  # (D, B, C)
    d, b = weights.shape[0], weights.shape[1]
    rows = torch.empty(d * b, objective.num_params, dtype=objective.dtype, device=objective.device)
    for j in range(d):
        per_example_output_gradients(objective, batch, weights[j], rows[j * b : (j + 1) * b])
    a_inv = 1.0 / damping_diagonal(objective, mu)
    gram = torch.zeros(d * b, d * b, dtype=torch.float64, device=rows.device)
    for lo in range(0, rows.shape[1], _COLUMNS):
        block = rows[:, lo : lo + _COLUMNS] * a_inv[lo : lo + _COLUMNS].sqrt()
        gram += (block @ block.T).double()
    gram += torch.eye(d * b, dtype=torch.float64, device=rows.device)
    return GaussNewtonFactor(rows, a_inv, torch.linalg.cholesky(gram), d)
