"""The dashboard's click with sketches (job kind ``sketch_click``): the sketch ranking of the *whole*
training set first (stored at once, so the page shows it while the rest runs), then the exact FastIF
re-rank of the union of the sketch's top ``rerank`` helpful and harmful examples and the kNN set (nothing
the kNN pre-filter finds is lost), stored as an exact run over those candidates, and how far they agreed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fastif_core import jobs
from fastif_core.config import InfluenceConfig, config_hash, from_dict
from fastif_core.errors import JobError
from fastif_core.sketch_config import SketchQueryConfig


@dataclass(frozen=True)
class SketchClickParams:
    """A sketch list over all N, then the exact re-rank of its top candidates and the kNN set."""

    example_id: str = field(metadata={"help": "id of the test example"})
    config: InfluenceConfig = field(
        default_factory=InfluenceConfig, metadata={"help": "exact re-rank (k = kNN set)"}
    )
    sketch: SketchQueryConfig = field(
        default_factory=SketchQueryConfig, metadata={"help": "the sketch query"}
    )
    rerank: int = field(
        default=100, metadata={"help": "sketch's top helpful and top harmful re-ranked exactly"}
    )
    model_id: int | None = field(
        default=None, metadata={"help": "model id in the store (None = the workspace's)"}
    )

    def validate(self) -> SketchClickParams:
        if not isinstance(self.example_id, str) or not self.example_id.strip():
            raise JobError(f"example_id={self.example_id!r} is invalid: allowed a non-empty example id")
        if self.rerank < 1:
            raise JobError(f"rerank={self.rerank!r} is invalid: allowed an integer >= 1")
        self.config.validate()
        self.sketch.validate()
        return self

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> SketchClickParams:
        data = dict(data)
        config = InfluenceConfig.from_json_dict(data.pop("config", {}))
        sketch = SketchQueryConfig.from_json_dict(data.pop("sketch", {}))
        return from_dict(cls, {**data, "config": config, "sketch": sketch})


jobs.register_kind("sketch_click", SketchClickParams, "sketch list over all N, then the exact re-rank")


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


def sketch_click(root: str | Path, params: SketchClickParams, *, loaded: Any = None, runner: Any = None,
                 job_id: int | None = None, owner: str | None = None, progress: Any = None) -> dict[str, Any]:  # fmt: skip
    """Run the click (see the module docstring): ``{"sketch_run_id", "exact_run_id", "candidates",
    "agreement", "seconds"}``. ``runner`` is :func:`fastif_core.query.serial_runner`'s signature (the
    worker passes its device group's)."""
    from fastif_core.query import _open, require_example, serial_runner, stored_config
    from fastif_core.sketch_query import influence_sketch_query
    from fastif_core.workspace import LoadedWorkspace

    cfg = params.config
    t0 = time.perf_counter()
    loaded = loaded or LoadedWorkspace.load(root)
    quick = influence_sketch_query(root, params.example_id, replace(cfg, top=0), params.sketch, loaded=loaded)
    t1 = time.perf_counter()
    rows = {r["train_id"]: r["influence"] for r in quick["helpful"] + quick["harmful"]}
    sketch_values = np.asarray([rows.get(i, 0.0) for i in loaded.train_ids])
    knn = loaded.nearest(params.example_id, cfg.k)[0] if cfg.k is not None else []
    picked = candidates(sketch_values, knn, params.rerank)
    key = config_hash({"method": "rerank", "influence": stored_config(cfg), "rerank": params.rerank,
                       "sketch_key": quick["config"]["cache_key"]})  # fmt: skip
    store, _ = _open(root)
    try:
        example = require_example(store, params.example_id, loaded.model_id)
        found = store.find_influence_run(loaded.model_id, params.example_id, key)
        if found is None:
            if progress is not None:
                progress(0.05, f"sketch list stored; exact re-rank of {len(picked)} candidates")
            result = (runner or serial_runner)(
                loaded, loaded.encode_test(example.to_record()), picked, cfg, progress
            )
            scores = [(loaded.train_ids[i], float(v)) for i, v in zip(result.indices.tolist(), result.values.tolist(),
                                                                       strict=True)]  # fmt: skip
            config = {**stored_config(cfg), "method": "rerank", "rerank": params.rerank,
                      "sketch_run_id": quick["run_id"], "cache_key": key}  # fmt: skip
            run_id = store.save_influence_run(loaded.model_id, params.example_id, config, scores,
                                              num_candidates=len(scores), timings=result.seconds,
                                              s_test_stats=result.s_test_stats, config_hash=key)  # fmt: skip
        else:
            run_id = found.id
        exact = store.get_influence_run(run_id, with_text=False)
    finally:
        store.close()
    exact_by_id = {s.train_id: s.value for s in exact.helpful(None) + exact.harmful(None)}
    ids = [loaded.train_ids[i] for i in picked]
    agree = agreement(np.asarray([rows[i] for i in ids]), np.asarray([exact_by_id[i] for i in ids]))
    return {"sketch_run_id": quick["run_id"], "exact_run_id": run_id, "candidates": len(picked),
            "knn": len(knn), "agreement": agree,
            "seconds": {"sketch": t1 - t0, "rerank": time.perf_counter() - t1}}  # fmt: skip
