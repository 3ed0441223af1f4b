"""Slice statistics (the paper's Table 4) and slice correlations (Table 5) of an influence matrix.

``values`` is ``(M, N)``: ``I[j, i]`` of training example ``i`` on test example ``j``, ``NaN`` where the
pair is not an edge (``i`` is not among ``j``'s candidates). ``test_slice`` ``(M,)`` gives each test
example's slice index. Sign convention: negative = helpful, positive = harmful.

- :func:`slice_statistics`: per slice, the edge counts and the mean ``|I|`` of helpful and of harmful edges.
- :func:`slice_means`: ``Ī[i, s]``, the mean signed influence of training example ``i`` over the test
  examples of slice ``s`` whose candidates include ``i`` (``NaN`` when none do).
- :func:`slice_correlations`: for every pair of slices, the Pearson correlation of ``Ī[:, s1]`` and
  ``Ī[:, s2]`` over the training examples with edges into both, and that count (a correlation needs
  at least two such examples and variance on both sides, else ``NaN``).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _mean(x: np.ndarray) -> float | None:
    return float(x.mean()) if x.size else None


def slice_statistics(values: np.ndarray, test_slice: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
    """One row per slice: test examples, training nodes, edges, helpful/harmful edge counts and mean |I|."""
    rows = []
    for s, name in enumerate(names):
        block = values[np.asarray(test_slice) == s]  # (m_s, N)
        edges = block[~np.isnan(block)]
        helpful, harmful = edges[edges < 0], edges[edges > 0]
        rows.append(
            {
                "slice": name,
                "test_examples": int(block.shape[0]),
                "train_nodes": int((~np.isnan(block)).any(axis=0).sum()),
                "edges": int(edges.size),
                "helpful_edges": int(helpful.size),
                "harmful_edges": int(harmful.size),
                "helpful_mean_abs": _mean(-helpful),
                "harmful_mean_abs": _mean(harmful),
                "mean": _mean(edges),
            }
        )
    return rows


def slice_means(values: np.ndarray, test_slice: np.ndarray, num_slices: int) -> np.ndarray:
    """``(N, S)`` mean signed influence of each training example on each slice (``NaN``: no edge)."""
    rows, cols = np.nonzero(~np.isnan(values))  # the E edges: no dense float64 (M, N) copy
    cell = cols.astype(np.int64) * num_slices + np.asarray(test_slice, dtype=np.int64)[rows]  # (E,)
    size = values.shape[1] * num_slices
    sums = np.bincount(cell, weights=values[rows, cols].astype(np.float64), minlength=size)
    counts = np.bincount(cell, minlength=size).astype(np.float64)
    sums, counts = sums.reshape(-1, num_slices), counts.reshape(-1, num_slices)  # (N, S)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def slice_correlations(means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(S, S)`` pairwise-complete Pearson correlations of the columns of ``means`` ``(N, S)`` and
    ``(S, S)`` counts of the rows present in both columns."""
    m = ~np.isnan(means)  # (N, S)
    mf = m.astype(np.float64)
    center = np.where(m, means, 0.0).sum(axis=0) / np.maximum(mf.sum(axis=0), 1.0)  # any constant works;
    x = np.where(m, means - center, 0.0)  # centring only keeps the sums below well conditioned
    n = mf.T @ mf  # (S, S): rows present in both s and t
    sx = x.T @ mf  # [s, t] = Σ over the rows common to s and t of x_s
    sxx = (x * x).T @ mf
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = x.T @ x - sx * sx.T / n
        var_s = sxx - sx**2 / n
        var_t = var_s.T
        corr = cov / np.sqrt(var_s * var_t)
    flat = (var_s <= 1e-12 * sxx) | (var_t <= 1e-12 * sxx.T)  # no variance (up to rounding) on one side
    corr = np.where((n >= 2) & ~flat, np.clip(corr, -1.0, 1.0), np.nan)
    return corr, n.astype(np.int64)


def correlation_table(values: np.ndarray, test_slice: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Table 5 as JSON: ``{"slices", "pearson" (S×S, None = undefined), "count" (S×S)}``."""
    corr, counts = slice_correlations(slice_means(values, test_slice, len(names)))
    pearson = [[None if np.isnan(v) else float(v) for v in row] for row in corr]
    return {"slices": list(names), "pearson": pearson, "count": counts.tolist()}
