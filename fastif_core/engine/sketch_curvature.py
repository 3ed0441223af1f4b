"""Curvature in sketch space, its factor, and influence scores over sketches (tensors only).

The exact path solves ``(G + 2·wd·D + μI) s = ∇ℓ(z_test)`` (README "Loss and gradients"); restricted to
the range of the sketch Π (:mod:`fastif_core.engine.sketch`) the system is

    H_Π = Π G Πᵀ + Π (2·wd·D + μI) Πᵀ,    Π G Πᵀ = (1/n) Σ_i Σ_r ψ_ir ψ_irᵀ,    ψ_ir = Π J_iᵀ (Q_i^{1/2})_r

and influence is ``I(z_i, z_test) = −φ_testᵀ H_Π⁻¹ φ_i`` with ``φ = Π ∇ℓ``. When Π is square and invertible
``Πᵀ H_Π⁻¹ Π = (G + 2·wd·D + μI)⁻¹``: the exact influence. The damping block is block diagonal and exact
(:meth:`Sketch.damping_blocks`). Factors (float64, built once):

- :class:`PrimalFactor`: the Cholesky factor of the ``d × d`` H_Π (from the Gram ``Σ ψψᵀ``).
- :class:`DualFactor`: for d larger than the number R of rows, Woodbury on ``A + KᵀK`` (A the damping
  blocks, ``K = ψ / √n``): per-block Cholesky of A and one ``R × R`` Cholesky of ``I + K A⁻¹ Kᵀ``.
- :class:`IdentityFactor`: ``H = I``, a plain gradient dot product (TracIn-like).

Every factor gives ``solve(V (M, d))`` and ``self_influence(Φ (n, d))`` = ``φᵀ H⁻¹ φ`` (RelatIF's
denominator). :func:`scores` is ``−X Φᵀ`` over training sketches held in row blocks (a memory map).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

Blocks = list[tuple[int, Tensor]]  # (offset, (s, s) float64) diagonal blocks of the damping term
_ROWS = 4096  # rows of sketches per matrix product (memory: _ROWS × d floats)


class SketchFactor(Protocol):
    kind: str

    def solve(self, v: Tensor) -> Tensor: ...

    def self_influence(self, phi: Tensor) -> Tensor: ...


class GramAccumulator:
    """``Σ ψψᵀ`` ``(d, d)`` float64 over batches of rows ``(B, R, d)`` (products in the rows' dtype)."""

    def __init__(self, dim: int, device: torch.device | str = "cpu") -> None:
        self.gram = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.examples = 0

    def add(self, rows: Tensor) -> None:
        flat = rows.reshape(-1, rows.shape[-1]).to(self.gram.device)
        self.gram += (flat.T @ flat).double()
        self.examples += rows.shape[0]


def _dense_blocks(blocks: Blocks, dim: int) -> Tensor:
    out = torch.zeros(dim, dim, dtype=torch.float64)
    for lo, b in blocks:
        out[lo : lo + len(b), lo : lo + len(b)] = b
    return out


@dataclass
class PrimalFactor:
    """``H_Π = gram/n + A`` factored by one ``d × d`` Cholesky (float64)."""

    chol: Tensor  # (d, d) lower
    kind: str = "gauss_newton"

    @classmethod
    def build(cls, gram: Tensor, n: int, blocks: Blocks) -> PrimalFactor:
        h = gram / n + _dense_blocks(blocks, gram.shape[0]).to(gram.device)
        return cls(torch.linalg.cholesky(h))

    def solve(self, v: Tensor) -> Tensor:
        """``H_Π⁻¹ v`` for ``v (M, d)`` (float64 back)."""
        return torch.cholesky_solve(v.to(self.chol).T, self.chol).T

    def self_influence(self, phi: Tensor) -> Tensor:
        y = torch.linalg.solve_triangular(self.chol, phi.to(self.chol).T, upper=False)  # (d, n)
        return y.pow(2).sum(0)


@dataclass
class DualFactor:
    """``(A + KᵀK)⁻¹ = A⁻¹ − A⁻¹Kᵀ(I + KA⁻¹Kᵀ)⁻¹KA⁻¹`` with A block diagonal: for d > R."""

    blocks: list[tuple[int, Tensor]]  # (offset, Cholesky factor of the damping block)
    rows: Tensor  # K (R, d)
    chol: Tensor  # (R, R) float64 lower factor of I + K A⁻¹ Kᵀ
    kind: str = "gauss_newton"

    @classmethod
    def build(cls, rows: Tensor, n: int, blocks: Blocks) -> DualFactor:
        """``rows (R, d)``: the ψ of all n examples (zero rows dropped here). ``K A⁻¹ Kᵀ`` is summed block by
        block in the rows' dtype in place (float32 rows: float32 sums, no ``R × R`` temporaries)."""
        rows = rows.reshape(-1, rows.shape[-1])
        keep = rows.abs().amax(dim=1) > 0
        rows = (rows if bool(keep.all()) else rows[keep]) * (1.0 / n**0.5)
        chols = [(lo, torch.linalg.cholesky(b)) for lo, b in blocks]
        m = torch.zeros(len(rows), len(rows), dtype=rows.dtype)
        for lo, c in chols:
            kb = rows[:, lo : lo + len(c)]  # (R, s)
            m.addmm_(kb, torch.cholesky_solve(kb.double().T, c).to(kb.dtype))  # += K_b A_b⁻¹ K_bᵀ
        m = m.double()
        m.diagonal().add_(1.0)
        return cls(chols, rows, torch.linalg.cholesky(m))

    def _a_inv(self, v: Tensor) -> Tensor:  # v (M, d) float64
        out = torch.empty_like(v)
        for lo, c in self.blocks:
            out[:, lo : lo + len(c)] = torch.cholesky_solve(v[:, lo : lo + len(c)].T, c).T
        return out

    def solve(self, v: Tensor) -> Tensor:
        u = self._a_inv(v.double())
        w = torch.cholesky_solve((u.to(self.rows.dtype) @ self.rows.T).double().T, self.chol).T  # (M, R)
        return u - self._a_inv((w.to(self.rows.dtype) @ self.rows).double())

    def self_influence(self, phi: Tensor) -> Tensor:
        out = []
        for lo in range(0, len(phi), _ROWS):
            p = phi[lo : lo + _ROWS].double()
            u = self._a_inv(p)
            z = (u.to(self.rows.dtype) @ self.rows.T).double()  # (b, R)
            y = torch.linalg.solve_triangular(self.chol, z.T, upper=False)
            out.append((p * u).sum(1) - y.pow(2).sum(0))
        return torch.cat(out)


@dataclass
class IdentityFactor:
    """``H = I``: a plain gradient dot product (TracIn-like)."""

    kind: str = "identity"

    def solve(self, v: Tensor) -> Tensor:
        return v.double()

    def self_influence(self, phi: Tensor) -> Tensor:
        return phi.double().pow(2).sum(1)


def choose_backend(dim: int, rows: int) -> str:
    """``primal`` when the d × d system is no larger than the R × R one, else ``dual``."""
    return "primal" if dim <= rows else "dual"


def scores(train: Iterable[Tensor] | Tensor, x: Tensor) -> Tensor:
    """Influence ``−X Φᵀ`` ``(M, N)`` of every training sketch (rows of ``train``, a tensor or row blocks,
    e.g. from a memory map) on the M solved test sketches ``x (M, d)``; products in ``train``'s dtype."""
    blocks = (
        [train[lo : lo + _ROWS] for lo in range(0, len(train), _ROWS)] if isinstance(train, Tensor) else train
    )
    out = []
    for block in blocks:
        block = torch.as_tensor(block)
        out.append(-(x.to(block.dtype) @ block.T))
    return torch.cat(out, dim=1) if out else x.new_zeros(len(x), 0)


def preconditioned(factor: SketchFactor, train: Iterable[Tensor]) -> Iterable[Tensor]:
    """``H⁻¹ φ_i`` of every training sketch, block by block (float64). H is symmetric, so
    ``−φ_testᵀ H⁻¹ φ_i = −φ_test · (H⁻¹ φ_i)``: with these kept, :func:`scores` of the *raw* test sketches
    is influence, and a query needs no factor (and the self-influence is ``φ_i · H⁻¹ φ_i``)."""
    for block in train:
        yield factor.solve(torch.as_tensor(block))


def paired_self_influences(train: Iterable[Tensor], solved: Iterable[Tensor]) -> Tensor:
    """``φ_i · (H⁻¹ φ_i)`` ``(N,)`` float64 from row blocks of the sketches and of their preconditioned rows."""
    return torch.cat(
        [
            (torch.as_tensor(a).double() * torch.as_tensor(b).double()).sum(1)
            for a, b in zip(train, solved, strict=True)
        ]
    )


def self_influences(factor: SketchFactor, train: Iterable[Tensor] | Tensor) -> Tensor:
    """``φ_iᵀ H⁻¹ φ_i`` ``(N,)`` float64 for every training sketch (row blocks as in :func:`scores`)."""
    blocks = (
        [train[lo : lo + _ROWS] for lo in range(0, len(train), _ROWS)] if isinstance(train, Tensor) else train
    )
    return torch.cat([factor.self_influence(torch.as_tensor(b)) for b in blocks])


def relative(values: Tensor, self_influence: Tensor) -> Tensor:
    """RelatIF: each score divided by ``√(self-influence)`` of its training example ``(M, N)``."""
    return values / self_influence.clamp_min(1e-30).sqrt().to(values)
