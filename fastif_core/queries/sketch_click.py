"""The dashboard's click with sketches (job kind ``sketch_click``): the sketch ranking of the *whole*
training set first (stored at once, so the page shows it while the rest runs), then the exact FastIF
re-rank of the union of the sketch's top ``rerank`` helpful and harmful examples and the kNN set (nothing
the kNN pre-filter finds is lost), stored as an exact run over those candidates, and how far they agreed.
Its parameters are :class:`fastif_core.jobs.SketchClickParams`.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from fastif_core.config import config_hash
from fastif_core.jobs import SketchClickParams


def candidates(sketch_values: np.ndarray, knn: list[int], rerank: int) -> list[int]:
    """Training positions re-ranked exactly: the sketch's top ``rerank`` of each sign ∪ the kNN set."""
    order = np.argsort(sketch_values, kind="stable")
    return sorted(set(order[:rerank].tolist()) | set(order[::-1][:rerank].tolist()) | {int(i) for i in knn})


def agreement(sketch_values: np.ndarray, exact_values: np.ndarray) -> dict[str, float]:
    """Pearson and top-10 overlaps (helpful, harmful) of the sketch and the exact values on the candidates."""
    gh, eh = np.argsort(sketch_values, kind="stable"), np.argsort(exact_values, kind="stable")
    m = min(10, len(gh))
    top = {"helpful": (gh[:m], eh[:m]), "harmful": (gh[::-1][:m], eh[::-1][:m])}
    out = {
        f"top10_{side}": len(set(a.tolist()) & set(b.tolist())) / max(m, 1) for side, (a, b) in top.items()
    }
    out["pearson"] = float(np.corrcoef(sketch_values, exact_values)[0, 1]) if len(gh) > 1 else float("nan")
    return out


def sketch_click(
    root: str | Path,
    params: SketchClickParams,
    *,
    loaded: Any = None,
    runner: Any = None,
    job_id: int | None = None,
    owner: str | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Run the click (see the module docstring): ``{"sketch_run_id", "exact_run_id", "candidates",
    "agreement", "seconds"}``. ``runner`` is :func:`fastif_core.queries.influence.serial_runner`'s signature (the
    worker passes its device group's)."""
    from fastif_core.queries.examples import open_store, require_example
    from fastif_core.queries.influence import serial_runner, stored_config
    from fastif_core.queries.sketch import influence_sketch_query
    from fastif_core.workspace.layout import LoadedWorkspace

    cfg = params.config
    t0 = time.perf_counter()
    loaded = loaded or LoadedWorkspace.load(root)
    quick = influence_sketch_query(root, params.example_id, replace(cfg, top=0), params.sketch, loaded=loaded)
    t1 = time.perf_counter()
    rows = {r["train_id"]: r["influence"] for r in quick["helpful"] + quick["harmful"]}
    sketch_values = np.asarray([rows.get(i, 0.0) for i in loaded.train_ids])
    knn = loaded.nearest(params.example_id, cfg.k)[0] if cfg.k is not None else []
    picked = candidates(sketch_values, knn, params.rerank)
    key = config_hash(
        {
            "method": "rerank",
            "influence": stored_config(cfg),
            "rerank": params.rerank,
            "sketch_key": quick["config"]["cache_key"],
        }
    )
    store, _ = open_store(root)
    try:
        example = require_example(store, params.example_id, loaded.model_id)
        found = store.find_influence_run(loaded.model_id, params.example_id, key)
        if found is None:
            if progress is not None:
                progress(0.05, f"sketch list stored; exact re-rank of {len(picked)} candidates")
            batch = loaded.encode_test(example.to_record())
            result = (runner or serial_runner)(loaded, [batch], [picked], cfg, progress).result(0)
            scores = [
                (loaded.train_ids[i], float(v))
                for i, v in zip(result.indices.tolist(), result.values.tolist(), strict=True)
            ]
            config = {
                **stored_config(cfg),
                "method": "rerank",
                "rerank": params.rerank,
                "sketch_run_id": quick["run_id"],
                "cache_key": key,
            }
            run_id = store.save_influence_run(
                loaded.model_id,
                params.example_id,
                config,
                scores,
                num_candidates=len(scores),
                timings=result.seconds,
                s_test_stats=result.s_test_stats,
                config_hash=key,
            )
        else:
            run_id = found.id
        exact = store.get_influence_run(run_id, with_text=False)
    finally:
        store.close()
    exact_by_id = {s.train_id: s.value for s in exact.helpful(None) + exact.harmful(None)}
    ids = [loaded.train_ids[i] for i in picked]
    agree = agreement(np.asarray([rows[i] for i in ids]), np.asarray([exact_by_id[i] for i in ids]))
    return {
        "sketch_run_id": quick["run_id"],
        "exact_run_id": run_id,
        "candidates": len(picked),
        "knn": len(knn),
        "agreement": agree,
        "seconds": {"sketch": t1 - t0, "rerank": time.perf_counter() - t1},
    }
