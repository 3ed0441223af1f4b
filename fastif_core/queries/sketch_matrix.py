"""Influence matrices from sketches (``fastif matrix --method sketch``): every test's row over all N
training examples, one sketch-space solve and one product per row block, stored in the layout of
:mod:`fastif_core.store.matrices` (block by block: a restarted run computes only the missing blocks) under
a key that names the method, the sketch query settings and the index, so it never answers an exact request.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from fastif_core.config import InfluenceConfig, SketchQueryConfig


def sketch_matrix(
    loaded: Any,
    test_ids: Sequence[str],
    cfg: InfluenceConfig,
    qcfg: SketchQueryConfig,
    *,
    row_block: int = 32,
    col_block: int = 1024,
    progress: Any = None,
) -> Any:
    """The ``(M, N)`` matrix of ``test_ids`` from the sketch index (see the module docstring)."""
    from fastif_core.queries import sketch as sq
    from fastif_core.queries.examples import require_example
    from fastif_core.queries.matrix import MatrixResult, matrix_config
    from fastif_core.store import Store
    from fastif_core.store import matrices as sm

    start = time.perf_counter()
    cfg = replace(cfg, k=None).validate()
    test_ids = [str(t) for t in test_ids]
    config = {
        **matrix_config(cfg, True),
        "method": "sketch",
        "sketch_query": qcfg.key_fields(),
        "sketch_key": sq.query_key(loaded, cfg, qcfg),
    }
    seconds = {
        "knn": 0.0,
        "factor": 0.0,
        "test_gradient": 0.0,
        "s_test": 0.0,
        "scoring": 0.0,
        "store_write": 0.0,
    }
    store = Store.open(loaded.root)
    try:
        records = [require_example(store, t, loaded.model_id).to_record() for t in test_ids]
        info = sm.start_matrix(
            store,
            model_id=loaded.model_id,
            test_ids=test_ids,
            train_positions=list(range(len(loaded.train))),
            config=config,
            full=True,
            row_block=row_block,
            col_block=col_block,
        )
        cached = info.status == "complete"
        have = sm.stored_chunks(store, info.id)
        todo = sorted({r for r, c in info.blocks() if (r, c) not in have})
        if todo:
            t0 = time.perf_counter()
            sess = sq.session(loaded, qcfg, cfg)
            seconds["factor"] = time.perf_counter() - t0
        for j, r0 in enumerate(todo):
            batches = [loaded.encode_test(r) for r in records[r0 : r0 + row_block]]
            values, split = sq.sketch_scores(sess, loaded.objective, batches, cfg, qcfg.relative)
            for key in ("test_gradient", "s_test", "scoring"):
                seconds[key] += split[key]
            t1 = time.perf_counter()
            block = values.float().numpy()
            for r, c0 in info.blocks():
                if r == r0 and (r, c0) not in have:
                    sm.save_chunk(store, info.id, r0, c0, block[:, c0 : c0 + col_block])
            seconds["store_write"] += time.perf_counter() - t1
            if progress is not None:
                progress((j + 1) / len(todo), f"tests {r0}..{r0 + len(batches) - 1}")
        t2 = time.perf_counter()
        values = sm.read_values(store, info.id)
        seconds["read"] = time.perf_counter() - t2
        seconds["total"] = time.perf_counter() - start
        if not cached:
            info = sm.complete_matrix(
                store, info.id, {**seconds, "chunks_computed": len(info.blocks()) - len(have)}
            )
    finally:
        store.close()
    chunks = {
        "total": len(info.blocks()),
        "computed": len(info.blocks()) - len(have),
        "found_stored": len(have),
        "derived_from_full": 0,
    }
    return MatrixResult(
        info.id,
        info.model_id,
        info.test_ids,
        list(loaded.train_ids),
        info.train_positions,
        np.asarray(values),
        cfg,
        True,
        seconds,
        chunks,
        cached,
        {},
    )
