"""The damped Gauss-Newton system on one batch, solved exactly by the Woodbury identity (tensors only).

On a batch of B examples with C outputs the Gauss-Newton curvature of :mod:`fastif_core.engine.curvature` is

    G_b + μI = A + KᵀK,    A = μI + 2·wd·I_decayed (diagonal),    K = stack_i Q_i^{1/2} J_i / √B  (R, P)

with ``J_i`` the Jacobian of example i's outputs and ``Q_i`` the (PSD-projected) Hessian of its loss w.r.t.
them. K has at most B·C rows (R = 2B for softmax cross-entropy over 3 classes: ``Q_i`` has rank C − 1), so

    (A + KᵀK)⁻¹ v = A⁻¹v − A⁻¹Kᵀ (I + K A⁻¹ Kᵀ)⁻¹ K A⁻¹ v

needs one R × R Cholesky factor. Building it costs R/B batched backward passes with per-example hooks
(:func:`fastif_core.engine.per_example.per_example_output_gradients`) and one ``R × R`` Gram product (column
blocks summed in float64); every solve after that is two passes over K, column block by column block, for
one vector or for M at once, in place (:meth:`GaussNewtonFactor.solve_`: no ``(M, P)`` temporary, and the
residual comes out of the R-dimensional space at no extra pass). The answer is the fixed point that
conjugate gradient on the same batch approaches (``solver=cg``, ``curvature=gauss_newton``), without
iterations or a tolerance. Memory: K itself, ``R × P`` floats (about 5.5 GB for B=64 on MiniLM's 10.8M
trainable parameters, in float32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fastif_core.engine.curvature import output_hessians
from fastif_core.engine.examples import Batch
from fastif_core.engine.objective import Objective
from fastif_core.engine.per_example import per_example_output_gradients

# Parameters per block of the Gram products, each block's float32 product summed in float64. On the 8K
# MNLI workspace's factor (B=64, R=128, P=10.8M, 2 cores) float32 blocks of 2^16 gave the same solve
# residual as float64 products (3.2e-8 vs 3.1e-8 on 16 test gradients; solutions equal to 2e-8) in 10 s,
# where the float64 products made the whole factor build 59 s.
# The same width blocks a solve (memory: (M + R) × this, one block at a time).
_COLUMNS = 1 << 16


@dataclass(frozen=True)
class GaussNewtonFactor:
    """``(A + KᵀK)`` on one batch, factored: solves and residuals for one vector or many."""

    rows: Tensor  # K (R, P)
    a_inv: Tensor  # (P,) the inverse of the diagonal A
    chol: Tensor  # (R, R) float64 lower Cholesky factor of I + K A⁻¹ Kᵀ (column blocks summed in float64)
    kk: Tensor  # (R, R) float64 K Kᵀ: measures residuals ``Kᵀd`` in the R-dimensional space
    passes: int  # batched backward passes that built K (one per kept output direction)

    def solve(self, v: Tensor) -> Tensor:
        """``(A + KᵀK)⁻¹ v`` for ``v (P,)`` or ``(M, P)`` (rows are right-hand sides); same shape back."""
        x = v.reshape(-1, v.shape[-1]).to(self.rows.dtype, copy=True)
        self.solve_(x)
        return x.reshape(v.shape)

    def solve_(self, v: Tensor) -> Tensor:
        """Solve in place: ``v (M, P)`` becomes ``(A + KᵀK)⁻¹ v``; returns the relative residuals ``(M,)``.

        Two passes over K, column block by column block, for all M rows at once (no ``(M, P)`` temporary):
        ``z = K A⁻¹ v``, ``w = (I + K A⁻¹ Kᵀ)⁻¹ z``, then ``x = A⁻¹(v − Kᵀw)`` written over v while
        ``u = Kx`` accumulates. Since ``Ax = v − Kᵀw``, the residual is exactly
        ``v − (A + KᵀK)x = Kᵀ(w − u)``, whose norm ``√((w−u)ᵀ KKᵀ (w−u))`` costs no further pass."""
        if v.dim() != 2 or v.shape[1] != self.rows.shape[1] or v.dtype != self.rows.dtype:
            want = f"(M, {self.rows.shape[1]}) {self.rows.dtype}"
            raise ValueError(f"v must be {want}, not {tuple(v.shape)} {v.dtype}")
        m, r = v.shape[0], self.rows.shape[0]
        z = torch.zeros(m, r, dtype=torch.float64, device=v.device)
        v_sq = torch.zeros(m, dtype=torch.float64, device=v.device)
        for cols in _blocks(v.shape[1], _COLUMNS):
            vb = v[:, cols]
            v_sq += vb.double().pow(2).sum(dim=1)
            z += ((vb * self.a_inv[cols]) @ self.rows[:, cols].T).double()
        w = torch.cholesky_solve(z.T, self.chol).T  # (M, R) float64
        w_low = w.to(v.dtype)
        u = torch.zeros_like(z)
        for cols in _blocks(v.shape[1], _COLUMNS):
            k = self.rows[:, cols]
            xb = (v[:, cols] - w_low @ k) * self.a_inv[cols]
            v[:, cols] = xb
            u += (xb @ k.T).double()
        d = w - u
        r_sq = ((d @ self.kk) * d).sum(dim=1).clamp_min(0.0)
        return r_sq.sqrt() / v_sq.sqrt().clamp_min(1e-30)

    def apply(self, x: Tensor) -> Tensor:
        """``(A + KᵀK) x`` for ``x (P,)`` or ``(M, P)``: the system itself, for residual checks."""
        xs = x.reshape(-1, x.shape[-1]).to(self.rows.dtype)
        return (xs / self.a_inv + (xs @ self.rows.T) @ self.rows).reshape(x.shape)

    def residual(self, x: Tensor, v: Tensor) -> Tensor:
        """Relative residual ``‖(A + KᵀK)x − v‖ / ‖v‖`` per right-hand side: ``()`` or ``(M,)``."""
        r = self.apply(x) - v.to(self.rows.dtype)
        return r.norm(dim=-1) / v.norm(dim=-1).clamp_min(1e-30)


def _blocks(n: int, width: int) -> list[slice]:
    return [slice(lo, min(lo + width, n)) for lo in range(0, n, width)]


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
    kk = torch.zeros_like(gram)
    for cols in _blocks(rows.shape[1], _COLUMNS):
        block = rows[:, cols]
        gram += ((block * a_inv[cols]) @ block.T).double()
        kk += (block @ block.T).double()
    gram += torch.eye(d * b, dtype=torch.float64, device=rows.device)
    return GaussNewtonFactor(rows, a_inv, torch.linalg.cholesky(gram), kk, d)
