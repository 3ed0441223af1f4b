"""Curvature-vector products and exact references: the matrices the s_test solvers invert.

The curvature C is that of the batch-mean objective (see :mod:`fastif_core.engine.objective`) over the
trainable parameters, L2 term included:

- ``hessian``: the true Hessian ``H_b``. :func:`hvp` computes ``H_b v`` exactly on a batch, by
  forward-over-reverse (``torch.func.jvp`` of ``torch.func.grad``) or double backward.
- ``gauss_newton``: ``G_b = (1/B) Σ_i J_iᵀ Q_i J_i + 2·wd·I_decayed``, with ``J_i`` the Jacobian of example
  i's outputs and ``Q_i`` the Hessian of its loss w.r.t. those outputs, projected onto the positive
  semi-definite cone (a no-op for cross-entropy; it matters for the 2-way HANS loss ``-log(p_n + p_c)``,
  which is not convex in the logits). ``G_b`` is PSD by construction, so ``G_b + μI`` is positive definite
  for every μ > 0: the curvature kronfluence, TRAK and LoGra build on. :func:`gnvp` computes ``G_b v`` with
  one forward-mode pass and one backward pass.

:func:`exact_hessian`, :func:`exact_gauss_newton` and :func:`exact_damped_solve` are dense references for
tiny models (tests). :func:`estimate_scale` bounds ``λ_max`` by power iteration (LiSSA's scale). The
solvers (LiSSA, conjugate gradient) live in :mod:`fastif_core.engine.solvers`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from fastif_core.config import CURVATURES
from fastif_core.engine.examples import Batch, Examples, sample_indices, to_device
from fastif_core.engine.objective import Objective, objective_device
from fastif_core.errors import ConfigError

HVP_METHODS = ("forward_over_reverse", "double_backward")
# bench.bench_hvp on the packaged MiniLM (eager attention, MNLI pairs, embeddings + 4 of 6 layers frozen,
# 3.7M trainable), seconds per HVP, double backward vs forward-over-reverse: CPU 2 threads 0.045 vs 0.064 (B=1),
# 0.25 vs 0.27 (B=8); H200 0.016 vs 0.031 (B=1), 0.021 vs 0.040 (B=8). Double backward wins everywhere measured.
DEFAULT_HVP_METHOD = "double_backward"


def hvp(objective: Objective, batch: Batch, v: Tensor, method: str = DEFAULT_HVP_METHOD) -> Tensor:
    """Exact Hessian-vector product ``H_b v`` ``(P,)`` of the batch-mean loss; ``v`` is flat ``(P,)``.

    The data term goes through autodiff; the L2 term's Hessian (``2·wd`` on decayed entries) is added
    analytically, which saves a pass over all parameters inside the autodiff graph.
    The batch must already be on the objective's device; callers run inside ``objective.evaluating()``.
    """
    vs = objective.unflatten(v.to(objective.device, objective.dtype))
    if method == "forward_over_reverse":
        data = _hvp_forward_over_reverse(objective, batch, vs)
    elif method == "double_backward":
        data = _hvp_double_backward(objective, batch, vs)
    else:
        raise ConfigError(f"hvp method={method!r} is invalid: allowed {list(HVP_METHODS)}")
    if objective.weight_decay == 0.0:
        return objective.flatten(data)
    return objective.flatten(data) + objective.flatten(objective.regularizer_hvp(vs))  # + 2·wd·v (decayed)


def _hvp_forward_over_reverse(objective: Objective, batch: Batch, vs: dict[str, Tensor]) -> dict[str, Tensor]:
    def gradient(params: dict[str, Tensor]) -> dict[str, Tensor]:
        return torch.func.grad(lambda p: objective.data_loss(p, batch).mean())(params)

    _, hv = torch.func.jvp(gradient, (objective.params,), (vs,))
    return hv


def _hvp_double_backward(objective: Objective, batch: Batch, vs: dict[str, Tensor]) -> dict[str, Tensor]:
    leaves = {n: p.detach().requires_grad_() for n, p in objective.params.items()}
    inputs = [leaves[n] for n in objective.names]
    loss = objective.data_loss(leaves, batch).mean()
    grads = torch.autograd.grad(loss, inputs, create_graph=True)
    hv = torch.autograd.grad(grads, inputs, grad_outputs=[vs[n] for n in objective.names])
    return dict(zip(objective.names, hv, strict=True))


def exact_hessian(objective: Objective, batch: Batch) -> Tensor:
    """The full Hessian ``(P, P)`` of the batch-mean loss (tiny models only: tests and references)."""
    batch = to_device(batch, objective.device)
    flat = objective.flatten(objective.params)

    def loss(theta: Tensor) -> Tensor:
        return objective.batch_loss(objective.unflatten(theta), batch)

    with objective.evaluating():
        return torch.func.hessian(loss)(flat)


def exact_inverse_hvp(objective: Objective, batch: Batch, v: Tensor, damping: float) -> Tensor:
    """Reference ``(H + damping·I)⁻¹ v`` ``(P,)`` by a dense solve; LiSSA's fixed point has damping = d·s."""
    h = exact_hessian(objective, batch)
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    return torch.linalg.solve(h + damping * eye, v.to(h.device, h.dtype))


def exact_gauss_newton(objective: Objective, batch: Batch) -> Tensor:
    """The full Gauss-Newton matrix ``(P, P)`` of the batch-mean loss (tiny models only: tests)."""
    batch = to_device(batch, objective.device)
    flat = objective.flatten(objective.params)
    with objective.evaluating():
        outputs = objective.outputs(objective.params, batch).detach()  # (B, C)
        jac = torch.func.jacrev(lambda t: objective.outputs(objective.unflatten(t), batch))(flat)  # (B, C, P)
        q = output_hessians(objective, outputs, batch["labels"])  # (B, C, C)
    qj = torch.einsum("bcd,bdp->bcp", q, jac).reshape(-1, flat.numel())  # (B·C, P)
    g = jac.reshape(-1, flat.numel()).T @ qj / outputs.shape[0]  # (P, P)
    reg = objective.flatten(objective.regularizer_hvp(objective.unflatten(torch.ones_like(flat))))
    return g + torch.diag(reg)


def exact_curvature(objective: Objective, batch: Batch, curvature: str = "hessian") -> Tensor:
    """The dense curvature matrix ``(P, P)`` of ``curvature`` (``hessian`` | ``gauss_newton``)."""
    if curvature == "gauss_newton":
        return exact_gauss_newton(objective, batch)
    _check_curvature(curvature)
    return exact_hessian(objective, batch)


def exact_damped_solve(
    objective: Objective, batch: Batch, v: Tensor, damping: float, curvature: str = "hessian"
) -> Tensor:
    """Reference ``(C + damping·I)⁻¹ v`` ``(P,)`` by a dense solve (the fixed point every solver targets)."""
    c = exact_curvature(objective, batch, curvature)
    eye = torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    return torch.linalg.solve(c + damping * eye, v.to(c.device, c.dtype))


def output_hessians(objective: Objective, outputs: Tensor, labels: Tensor) -> Tensor:
    """Per-example Hessians ``(B, C, C)`` of the loss w.r.t. the outputs, projected to be PSD.

    The loss is a sum of per-example terms, so the Hessian of ``Σ_i ℓ_i`` w.r.t. the ``(B, C)`` outputs
    is block diagonal: C forward-over-reverse products with the all-rows basis vector ``e_c`` give
    column c of every block at once.
    """
    out = outputs.detach()

    def grad_sum(o: Tensor) -> Tensor:
        return torch.func.grad(lambda x: objective.loss(x, labels).sum())(o)

    cols = []
    for j in range(out.shape[1]):
        basis = torch.zeros_like(out)
        basis[:, j] = 1.0
        cols.append(torch.func.jvp(grad_sum, (out,), (basis,))[1])  # (B, C): column j of each block
    q = torch.stack(cols, dim=-1)  # (B, C, C)
    q = 0.5 * (q + q.transpose(1, 2))
    evals, evecs = torch.linalg.eigh(q)
    return evecs @ torch.diag_embed(evals.clamp(min=0.0)) @ evecs.transpose(1, 2)


def gnvp(objective: Objective, batch: Batch, v: Tensor) -> Tensor:
    """Gauss-Newton-vector product ``G_b v`` ``(P,)`` (see the module docstring); ``v`` is flat ``(P,)``.

    ``u = J v`` by one ``torch.func.jvp`` of the outputs, ``w_i = Q_i u_i``, then ``Jᵀ w / B`` by one
    backward pass; the L2 term (``2·wd·v`` on decayed entries) is added analytically.
    The batch must already be on the objective's device; callers run inside ``objective.evaluating()``.
    """
    vs = objective.unflatten(v.to(objective.device, objective.dtype))
    with torch.no_grad():
        outputs, u = torch.func.jvp(lambda p: objective.outputs(p, batch), (objective.params,), (vs,))
        w = torch.einsum("bcd,bd->bc", output_hessians(objective, outputs, batch["labels"]), u)  # (B, C)
    leaves = {n: p.detach().requires_grad_() for n, p in objective.params.items()}
    inputs = [leaves[n] for n in objective.names]
    primal = objective.outputs(leaves, batch)  # (B, C)
    jtw = torch.autograd.grad(primal, inputs, grad_outputs=w / outputs.shape[0], allow_unused=True)
    flat = torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(jtw, inputs, strict=True)]
    )
    if objective.weight_decay == 0.0:
        return flat
    return flat + objective.flatten(objective.regularizer_hvp(vs))


def curvature_vp(
    objective: Objective,
    batch: Batch,
    v: Tensor,
    curvature: str = "hessian",
    method: str = DEFAULT_HVP_METHOD,
) -> Tensor:
    """``C_b v`` ``(P,)`` for ``curvature`` ``hessian`` (:func:`hvp` with ``method``) or ``gauss_newton``."""
    if curvature == "gauss_newton":
        return gnvp(objective, batch, v)
    _check_curvature(curvature)
    return hvp(objective, batch, v, method)


def _check_curvature(curvature: str) -> None:
    if curvature not in CURVATURES:
        raise ConfigError(f"curvature={curvature!r} is invalid: allowed {' | '.join(CURVATURES)}")


def estimate_scale(
    objective: Objective,
    train: Examples,
    batch_size: int,
    *,
    batches: int = 8,
    iterations: int = 20,
    seed: int = 0,
    safety: float = 2.0,
    device: torch.device | str | None = None,
    curvature: str = "hessian",
) -> float:
    """A LiSSA scale ``safety × max_b |λ_max(C_b)|`` by power iteration on ``batches`` random batches.

    Uses batches of the recursion's own size: with B=1 single-example Hessians must be contracted too.
    """
    device = objective_device(objective, device)
    gen = torch.Generator().manual_seed(seed)
    largest = 0.0
    with objective.evaluating():
        for _ in range(batches):
            batch = to_device(train.collate(sample_indices(len(train), batch_size, gen)), device)
            u = torch.randn(objective.num_params, generator=gen, dtype=torch.float64).to(
                device, objective.dtype
            )
            largest = max(largest, power_iteration(objective, batch, u, iterations, curvature))
    return safety * max(largest, 1e-8)


def power_iteration(
    objective: Objective, batch: Batch, u: Tensor, iterations: int, curvature: str = "hessian"
) -> float:
    """|largest-magnitude eigenvalue| of ``C_b`` after ``iterations`` steps from ``u``."""
    u = u / u.norm()
    eig = 0.0
    for _ in range(iterations):
        w = curvature_vp(objective, batch, u, curvature)
        eig = abs(float(u @ w))
        norm = float(w.norm())
        if not math.isfinite(norm) or norm == 0.0:
            break
        u = w / norm
    return eig


VECTORS_PER_CALL = 16  # curvature products per batched autograd call (bounds the extra activation memory)


def _split(objective: Objective, vs: Tensor) -> dict[str, Tensor]:
    """``(K, P)`` -> name -> ``(K, *shape)`` views, in the objective's parameter order."""
    params = objective.params
    sizes = [params[n].numel() for n in objective.names]
    parts = torch.split(vs, sizes, dim=1)
    return {n: c.reshape(vs.shape[0], *params[n].shape) for n, c in zip(objective.names, parts, strict=True)}


def _join(objective: Objective, tensors: dict[str, Tensor], k: int) -> Tensor:
    """name -> ``(K, *shape)`` -> ``(K, P)``."""
    return torch.cat([tensors[n].reshape(k, -1) for n in objective.names], dim=1)


def _leaves(objective: Objective) -> tuple[dict[str, Tensor], list[Tensor]]:
    leaves = {n: p.detach().requires_grad_() for n, p in objective.params.items()}
    return leaves, [leaves[n] for n in objective.names]


def _hvp_batched(objective: Objective, batch: Batch, vs: dict[str, Tensor], method: str) -> dict[str, Tensor]:
    """``H_b v_k`` for K stacked tangents (data term): batched double backward or vmapped forward mode."""
    if method == "forward_over_reverse":

        def gradient(params: dict[str, Tensor]) -> dict[str, Tensor]:
            return torch.func.grad(lambda p: objective.data_loss(p, batch).mean())(params)

        one = lambda t: torch.func.jvp(gradient, (objective.params,), (t,))[1]  # noqa: E731
        return torch.func.vmap(one)(vs)
    leaves, inputs = _leaves(objective)
    grads = torch.autograd.grad(objective.data_loss(leaves, batch).mean(), inputs, create_graph=True)
    hv = torch.autograd.grad(
        grads, inputs, grad_outputs=[vs[n] for n in objective.names], is_grads_batched=True
    )
    return dict(zip(objective.names, hv, strict=True))


def _gnvp_batched(objective: Objective, batch: Batch, vs: dict[str, Tensor]) -> dict[str, Tensor]:
    """``G_b v_k`` for K stacked tangents: ``u_k = J v_k`` by vmapped forward mode, ``w_k = Q u_k`` with the
    output Hessians Q computed once, ``Jᵀ w_k / B`` by one batched backward."""
    with torch.no_grad():
        outputs = objective.outputs(objective.params, batch)  # (B, C)
        one = lambda t: torch.func.jvp(lambda p: objective.outputs(p, batch), (objective.params,), (t,))[1]  # noqa: E731
        u = torch.func.vmap(one)(vs)  # (K, B, C)
        q = output_hessians(objective, outputs, batch["labels"])  # (B, C, C)
        w = torch.einsum("bcd,kbd->kbc", q, u) / outputs.shape[0]  # (K, B, C)
    leaves, inputs = _leaves(objective)
    primal = objective.outputs(leaves, batch)
    jtw = torch.autograd.grad(primal, inputs, grad_outputs=w, is_grads_batched=True, allow_unused=True)
    k = w.shape[0]
    return {
        n: torch.zeros(k, *p.shape, dtype=p.dtype, device=p.device) if g is None else g
        for n, g, p in zip(objective.names, jtw, inputs, strict=True)
    }


def _products_batched(objective: Objective, batch: Batch, vs: Tensor, curvature: str, method: str) -> Tensor:
    """``C_b v_k`` ``(K, P)`` in one autograd call (data term by autodiff, L2 term analytically)."""
    split = _split(objective, vs)
    data = (
        _gnvp_batched(objective, batch, split)
        if curvature == "gauss_newton"
        else _hvp_batched(objective, batch, split, method)
    )
    out = _join(objective, data, vs.shape[0])
    if objective.weight_decay == 0.0:
        return out
    return out + _join(objective, objective.regularizer_hvp(split), vs.shape[0])


def curvature_vps(
    objective: Objective,
    batch: Batch,
    vectors: Sequence[Tensor],
    curvature: str = "hessian",
    method: str = DEFAULT_HVP_METHOD,
    batched: bool = False,
) -> list[Tensor]:
    """``[C_b v for v in vectors]`` (each ``(P,)``) on one batch: a loop of :func:`curvature_vp`, or with
    ``batched`` groups of ``VECTORS_PER_CALL`` products per autograd call. Callers run in eval mode."""
    if not batched:
        return [curvature_vp(objective, batch, v, curvature, method) for v in vectors]
    out: list[Tensor] = []
    for lo in range(0, len(vectors), VECTORS_PER_CALL):
        group = torch.stack(
            [v.to(objective.device, objective.dtype) for v in vectors[lo : lo + VECTORS_PER_CALL]]
        )
        out.extend(_products_batched(objective, batch, group, curvature, method).unbind(0))
    return out
