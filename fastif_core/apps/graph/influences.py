"""The graph's influence matrix: one function, :func:`graph_influences`, between the graph and the engine.

Today it runs the single-example pipeline (:func:`fastif_core.query.influence_query`: the test example's
kNN candidates from ``loaded.nearest``, s_test, JVP scoring) once per test example and stores each row
as an ordinary influence run, so a restarted job skips the rows already stored and a row computed for
a graph also answers the Example page. Swapping in the batched engine (``matrix.influence_matrix``) is
a change to this function only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from fastif_core.config import InfluenceConfig
from fastif_core.query import Runner, serial_runner

Progress = Callable[[float, str], None]


def format_eta(seconds: float) -> str:
    """``1h 02m``, ``3m 05s`` or ``12s``."""
    s = max(0, int(round(seconds)))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


class RowClock:
    """Progress over ``total`` rows with an ETA from the mean time of the rows computed so far (rows
    found in the store take no time and do not count)."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total, self.progress = total, progress
        self.computed, self.stored, self.seconds = 0, 0, 0.0

    def message(self, row: int) -> str:
        left = self.total - row
        eta = f", ETA {format_eta(left * self.seconds / self.computed)}" if self.computed and left else ""
        return f"influence rows {row}/{self.total} ({self.stored} already stored){eta}"

    def within(self, row: int) -> Progress | None:
        """The progress callback of row ``row``'s own query."""
        if self.progress is None:
            return None
        report, total = self.progress, self.total
        return lambda fraction, message: report((row + fraction) / total, f"{self.message(row)} · {message}")

    def done(self, row: int, seconds: float, cached: bool) -> None:
        if cached:
            self.stored += 1
        else:
            self.computed, self.seconds = self.computed + 1, self.seconds + seconds
        if self.progress is not None:
            self.progress((row + 1) / self.total, self.message(row + 1))


def graph_influences(
    loaded: Any, test_ids: Sequence[str], cfg: InfluenceConfig, k: int | None, full: bool,
    progress: Progress | None = None, *, runner: Runner = serial_runner,
) -> tuple[np.ndarray, list[str], dict[str, int]]:  # fmt: skip
    """Influence of the training set on each test example.

    Returns ``(values (M, N) float32, train_ids, counts)``: ``values[j, i]`` is ``I(train_ids[i],
    test_ids[j])`` for the candidates of test example ``j`` (its ``k`` nearest, or all with ``full``) and
    ``NaN`` elsewhere; ``counts`` = rows ``computed`` now and rows found ``stored``.
    """
    from fastif_core.query import influence_query
    from fastif_core.store import Store

    query_cfg = replace(cfg, k=None if full else k, top=1)
    column = {train_id: i for i, train_id in enumerate(loaded.train_ids)}
    values = np.full((len(test_ids), len(loaded.train_ids)), np.nan, dtype=np.float32)
    clock = RowClock(len(test_ids), progress)
    with Store.open(loaded.root) as store:
        for row, example_id in enumerate(test_ids):
            t0 = time.perf_counter()
            out = influence_query(loaded.root, example_id, query_cfg, loaded=loaded, runner=runner,
                                  progress=clock.within(row))  # fmt: skip
            run = store.get_influence_run(out["run_id"], with_text=False)
            cols = np.fromiter((column[s.train_id] for s in run.scores), np.int64, len(run.scores))
            values[row, cols] = np.fromiter((s.value for s in run.scores), np.float32, len(run.scores))
            clock.done(row, time.perf_counter() - t0, bool(out["cached"]))
    return values, list(loaded.train_ids), {"computed": clock.computed, "stored": clock.stored}
