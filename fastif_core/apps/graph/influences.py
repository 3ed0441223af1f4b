"""The graph's influence matrix: one function, :func:`graph_influences`, between the graph and the engine.

It asks the batched engine (:func:`fastif_core.queries.matrix.influence_matrix`) for the ``(tests × candidates)``
matrix of the graph's test set: the union of the tests' k nearest training examples (NaN outside each
test's own k) or every training example. The matrix is stored block by block under its settings, so a
restarted graph job continues from the blocks already stored, another graph or a ``fastif matrix`` run on
the same tests and settings reuses it, and a full matrix stored for these tests answers any k.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from fastif_core.config import InfluenceConfig, SketchQueryConfig
from fastif_core.progress import Progress


def format_eta(seconds: float) -> str:
    """``1h 02m``, ``3m 05s`` or ``12s``."""
    s = max(0, int(round(seconds)))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def with_eta(progress: Progress | None) -> Progress | None:
    """``progress`` with an ETA appended, from the time elapsed at the current fraction."""
    if progress is None:
        return None
    start = time.perf_counter()

    def report(fraction: float, message: str) -> None:
        elapsed = time.perf_counter() - start
        eta = f", ETA {format_eta(elapsed * (1 - fraction) / fraction)}" if 0.0 < fraction < 1.0 else ""
        progress(fraction, f"influence matrix {100 * fraction:.0f}%{eta} · {message}")

    return report


def graph_influences(
    loaded: Any,
    test_ids: Sequence[str],
    cfg: InfluenceConfig,
    k: int | None,
    full: bool,
    progress: Progress | None = None,
    *,
    row_block: int | None = None,
    sketch: SketchQueryConfig | None = None,
) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """Influence of the training set on each test example.

    Returns ``(values (M, N) float32, train_ids, counts)``: ``values[j, i]`` is ``I(train_ids[i],
    test_ids[j])`` for the candidates of test example ``j`` (its ``k`` nearest, or all with ``full``) and
    ``NaN`` elsewhere; ``counts`` = the stored matrix's id and its blocks ``computed`` now, found
    ``stored`` and ``derived`` from a stored full matrix. With ``sketch`` the values come from the sketch
    index (:func:`fastif_core.queries.sketch_matrix.sketch_matrix`: every test's row over all N, stored
    under its own key), restricted to the same candidates.
    """
    from fastif_core.jobs import ROW_BLOCK
    from fastif_core.queries.matrix import candidate_mask, influence_matrix
    from fastif_core.queries.sketch_matrix import sketch_matrix

    cfg = replace(cfg, k=None if full else k, top=1)
    block = row_block or ROW_BLOCK
    if sketch is None:
        out = influence_matrix(
            loaded, list(test_ids), cfg, full=full, progress=with_eta(progress), row_block=block
        )
    else:
        out = sketch_matrix(loaded, list(test_ids), cfg, sketch, row_block=block, progress=with_eta(progress))
    values = np.full((len(test_ids), len(loaded.train_ids)), np.nan, dtype=np.float32)
    values[:, np.asarray(out.train_positions, dtype=np.int64)] = out.values
    if sketch is not None and not full:  # the exact graph's candidates: each test's k nearest
        values[~candidate_mask(loaded, test_ids, k)] = np.nan
    c = out.chunks
    counts = {
        "matrix_id": out.matrix_id,
        "computed": c["computed"],
        "stored": c["found_stored"],
        "derived": c["derived_from_full"],
        "cached": out.cached,
    }
    return values, list(loaded.train_ids), counts
