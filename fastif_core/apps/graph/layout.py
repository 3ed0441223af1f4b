"""The circular bipartite layout of an influence graph (the original FastIF code's picture, vectorised).

Test nodes lie on the unit circle, each slice on its own equal arc. A training node ``i`` lies at the
point of the inner disc (radius ``r < 1``) that minimises ``f_i(p) = Σ_j w_ij ‖p − q_j‖`` over the test
nodes ``j`` it has edges to, ``w_ij = |I_ij|`` (a weighted geometric median, constrained to the disc).

The original code solves one SLSQP problem per node, serially. :func:`geometric_medians` runs projected
Weiszfeld iterations for every node at once on the edge list (a few ``np.bincount`` per iteration).
Each Weiszfeld step minimises the quadratic majoriser ``Σ_j w_ij (‖p − q_j‖² / d_ij + d_ij) / 2`` of
``f_i`` at the current point (``d_ij`` the current distances); that majoriser is isotropic, so its
minimiser over the disc is the projection of its unconstrained one. Every step therefore decreases
``f_i`` (majorise-minimise) and the fixed point is the constrained optimum. Test nodes are on the
unit circle and training nodes inside radius ``r``, so ``d_ij >= 1 − r > 0``: no division by zero.
:func:`geometric_medians_slsqp` is the per-node reference (scipy), used by the tests and the timing.
"""

from __future__ import annotations

import numpy as np


def circle_positions(
    test_slice: np.ndarray, num_slices: int, *, jitter: float = 0.3, gap: float = 0.15, seed: int = 0
) -> np.ndarray:
    """``(M, 2)`` points on the unit circle: slice ``s`` spread evenly over arc ``s`` of ``num_slices``
    equal arcs (a ``gap`` fraction of each arc left empty between slices), with a seeded angular jitter of
    ``jitter`` times the spacing (the original's "small jitter", so equal angles never stack)."""
    test_slice = np.asarray(test_slice, dtype=np.int64)  # (M,)
    rng = np.random.default_rng(seed)
    angles = np.zeros(len(test_slice))
    arc = 2 * np.pi / max(num_slices, 1)
    for s in range(num_slices):
        rows = np.flatnonzero(test_slice == s)
        if rows.size == 0:
            continue
        step = arc * (1 - gap) / rows.size
        offsets = (np.arange(rows.size) + 0.5 + jitter * rng.uniform(-1, 1, rows.size)) * step
        angles[rows] = np.pi / 2 - (s * arc + arc * gap / 2 + offsets)  # clockwise from the top
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def project_to_disc(points: np.ndarray, radius: float) -> np.ndarray:
    """``(N, 2)`` points moved radially onto the disc of ``radius`` (points inside stay)."""
    norm = np.linalg.norm(points, axis=1, keepdims=True)  # (N, 1)
    return points * np.minimum(1.0, radius / np.maximum(norm, 1e-300))


def _weighted_sums(
    node: np.ndarray, weight: np.ndarray, q: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(Σ_j a_ij, Σ_j a_ij q_j)`` per node for edge weights ``a`` (E,) and edge targets ``q`` (E, 2)."""
    den = np.bincount(node, weight, n)  # (N,)
    num = np.stack([np.bincount(node, weight * q[:, 0], n), np.bincount(node, weight * q[:, 1], n)], 1)
    return den, num


def geometric_medians(
    node: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray,
    points: np.ndarray,
    num_nodes: int,
    *,
    radius: float,
    iterations: int = 500,
    tol: float = 1e-7,
) -> tuple[np.ndarray, int]:
    """Constrained weighted geometric medians of all nodes at once (projected Weiszfeld).

    Args:
        node, target: ``(E,)`` the training node and the test node of each edge.
        weight: ``(E,)`` positive edge weights (``|I|``).
        points: ``(M, 2)`` test node positions, on the unit circle.
        num_nodes: number of training nodes ``N``; a node without edges gets ``NaN``.
        radius: radius ``r < 1`` of the disc the medians are constrained to.
    Returns:
        ``((N, 2) positions, iterations run)``; stops when no node moves more than ``tol``.
    """
    node, target = np.asarray(node, np.int64), np.asarray(target, np.int64)
    weight = np.asarray(weight, np.float64)
    q = np.asarray(points, np.float64)[target]  # (E, 2)
    den, num = _weighted_sums(node, weight, q, num_nodes)
    has = den > 0
    p = project_to_disc(num / np.where(has, den, 1.0)[:, None], radius)  # start: the weighted mean
    done = 0
    for done in range(1, iterations + 1):  # noqa: B007 - the iterations run are returned
        d = np.maximum(np.linalg.norm(p[node] - q, axis=1), 1e-12)  # (E,) >= 1 - r in exact arithmetic
        den, num = _weighted_sums(node, weight / d, q, num_nodes)
        new = project_to_disc(num / np.where(has, den, 1.0)[:, None], radius)
        moved = float(np.max(np.abs(new - p))) if len(p) else 0.0
        p = new
        if moved <= tol:
            break
    p[~has] = np.nan
    return p, done


def median_objective(
    p: np.ndarray,
    node: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray,
    points: np.ndarray,
    num_nodes: int,
) -> np.ndarray:
    """``(N,)`` values ``f_i(p_i) = Σ_j w_ij ‖p_i − q_j‖`` (0 for nodes without edges)."""
    d = np.linalg.norm(p[node] - points[target], axis=1)
    return np.bincount(node, np.asarray(weight, np.float64) * d, num_nodes)


def geometric_medians_slsqp(
    node: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray,
    points: np.ndarray,
    num_nodes: int,
    *,
    radius: float,
) -> np.ndarray:
    """The original code's method: one ``scipy.optimize.minimize(method="SLSQP")`` per node, with the
    constraint ``‖p‖² <= r²``, from the (projected) weighted mean. ``(N, 2)``, ``NaN`` without edges."""
    from scipy.optimize import minimize

    node, target = np.asarray(node, np.int64), np.asarray(target, np.int64)
    order = np.argsort(node, kind="stable")
    bounds = np.searchsorted(node[order], np.arange(num_nodes + 1))
    out = np.full((num_nodes, 2), np.nan)
    for i in range(num_nodes):
        rows = order[bounds[i] : bounds[i + 1]]
        if rows.size == 0:
            continue
        q, w = points[target[rows]], np.asarray(weight, np.float64)[rows]  # (e, 2), (e,)
        x0 = project_to_disc((w @ q / w.sum())[None], radius)[0]
        res = minimize(
            lambda p, q=q, w=w: float(w @ np.linalg.norm(q - p, axis=1)),
            x0,
            method="SLSQP",
            constraints=[{"type": "ineq", "fun": lambda p: radius**2 - p @ p}],
            options={"ftol": 1e-12, "maxiter": 500},
        )
        out[i] = res.x
    return out
