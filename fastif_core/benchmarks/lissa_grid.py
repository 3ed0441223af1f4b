"""s_test trade-off (Fig. 4, App. A.2): time and error of LiSSA over a grid of depth J, batch B and
repetitions T, against the most expensive setting of the grid (largest J·B·T, computed first).

The grid is J × B at T = 1, plus T > 1 at B = 1 and the largest J. Error is the relative norm
``‖s - s_ref‖ / ‖s_ref‖``; since influence rankings ignore a common scale, the Pearson correlation of
the resulting influence over the k nearest candidates is reported too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastif_core.benchmarks.common import BenchConfig, TestExample, timed
from fastif_core.benchmarks.quality import correlations
from fastif_core.config import STestConfig
from fastif_core.engine.influence import test_gradient
from fastif_core.engine.scoring import score_candidates
from fastif_core.engine.solvers import solve
from fastif_core.progress import Progress


def grid_points(
    depths: Sequence[int], batches: Sequence[int], repeats: Sequence[int]
) -> list[tuple[int, int, int]]:
    """(J, B, T) points, the most expensive first."""
    points = {(j, b, 1) for j in depths for b in batches} | {(max(depths), 1, t) for t in repeats}
    return sorted(points, key=lambda p: (-p[0] * p[1] * p[2], p))


def tradeoff(loaded: Any, ex: TestExample, cfg: BenchConfig, progress: Progress) -> dict:
    """Seconds, relative error norm, spread and influence correlation of every grid point vs the reference."""
    obj, train = loaded.objective, loaded.train
    points = grid_points(cfg.grid_depths or (), cfg.grid_batches or (), cfg.grid_repeats or ())
    v = test_gradient(obj, ex.batch)
    candidates = loaded.nearest(ex.id, min(100, len(train)))[0]
    rows, ref, ref_scores = [], None, None
    for i, (j, b, t) in enumerate(points):
        progress(i / len(points), f"s_test grid: J={j} B={b} T={t}")
        lcfg = STestConfig(depth=j, batch_size=b, repeats=t, seed=cfg.seed)
        est, seconds = timed(lambda lcfg=lcfg: solve(obj, v, train, lcfg))
        scores = score_candidates(obj, est.s_test, train, candidates, cfg.score_batch_size).cpu()
        if ref is None:
            ref, ref_scores = est.s_test, scores
        error = float((est.s_test - ref).double().norm() / ref.double().norm())
        rows.append(
            {
                "depth": j,
                "batch_size": b,
                "repeats": t,
                "hvp_examples": j * b * t,
                "seconds": seconds,
                "error_norm": error,
                "rel_std": est.rel_std,
                "norm": est.norm,
                "influence_pearson": correlations(scores, ref_scores)["pearson"],
            }
        )
    return {
        "example_id": ex.id,
        "reference": {"depth": points[0][0], "batch_size": points[0][1], "repeats": points[0][2]},
        "candidates": len(candidates),
        "points": rows,
    }
