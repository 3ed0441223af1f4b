"""Many test examples at once (issue 12): the figures of ``fastif bench --section many``.

- ``batched``: M test examples, k candidates each: one batched run
  (:func:`fastif_core.engine.influence.compute_many`) against M single queries
  (:func:`fastif_core.engine.influence.compute_influence`) at the same settings; the values' agreement.
- ``full``: the full influence matrix of ``matrix_tests`` test examples × every training example
  (:func:`fastif_core.queries.matrix.influence_matrix`, stored in the workspace): wall time, stages, peak memory.
- ``crossover``: seconds per (candidate, test) pair against M for both scoring paths
  (:func:`fastif_core.benchmarks.scoring.scoring_benchmark`) and the cost model's choice.
- ``store``: write and read time of a ``rows × cols`` float32 matrix in the block layout of
  :mod:`fastif_core.store.matrices` (a scratch SQLite file unless ``url`` names another database).

From the command line (the 8K figures; see the README)::

    fastif bench -w workspaces/mnli8k --out bench-out --section many --many-tests 32 --solver-k 1000 \\
        --matrix-tests 400
    PYTHONPATH=. python -m fastif_core.benchmarks.many store --rows 400 --cols 8000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastif_core.config import InfluenceConfig, to_dict


def store_benchmark(
    rows: int = 400,
    cols: int = 8000,
    row_block: int = 32,
    col_block: int = 1024,
    url: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Seconds to write (block by block, one transaction each, as a matrix job does) and read back a
    random ``rows × cols`` float32 matrix; the values read equal the values written."""
    from fastif_core.store import Store
    from fastif_core.store import matrices as sm

    values = np.random.default_rng(seed).standard_normal((rows, cols), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(tmp, url=url)
        try:
            model = store.get_or_create_model("bench", "none", {"bench": time.time()}, ["a"])
            info = sm.start_matrix(
                store,
                model_id=model.id,
                test_ids=[f"t{i}" for i in range(rows)],
                train_positions=list(range(cols)),
                config={"bench": time.time()},
                full=True,
                row_block=row_block,
                col_block=col_block,
            )
            t0 = time.perf_counter()
            for r, c in info.blocks():
                sm.save_chunk(store, info.id, r, c, values[r : r + row_block, c : c + col_block])
            t1 = time.perf_counter()
            back = sm.read_values(store, info.id)
            t2 = time.perf_counter()
        finally:
            store.close()
    return {
        "rows": rows,
        "cols": cols,
        "row_block": row_block,
        "col_block": col_block,
        "blocks": len(info.blocks()),
        "megabytes": values.nbytes / 2**20,
        "write_seconds": t1 - t0,
        "read_seconds": t2 - t1,
        "equal": bool(np.array_equal(back, values)),
        "database": url or "sqlite (scratch file)",
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batched_vs_single(loaded: Any, example_ids: Sequence[str], cfg: InfluenceConfig) -> dict[str, Any]:
    """One batched run against M single queries, same settings and seeds (kNN search excluded from both)."""
    from fastif_core.engine.influence import compute_influence, compute_many
    from fastif_core.store import Store

    with Store.open(loaded.root) as store:
        batches = [loaded.encode_test(store.get_example(i, loaded.model_id).to_record()) for i in example_ids]
    cands = [loaded.nearest(i, cfg.k)[0] for i in example_ids] if cfg.k is not None else None
    obj, device = loaded.objective, loaded.objective.device
    _sync(device)
    t0 = time.perf_counter()
    many = compute_many(obj, batches, loaded.train, cands, cfg)
    _sync(device)
    t1 = time.perf_counter()
    singles = [
        compute_influence(obj, b, loaded.train, None if cands is None else cands[m], cfg)
        for m, b in enumerate(batches)
    ]
    _sync(device)
    t2 = time.perf_counter()
    diffs = [
        float((many.result(m).values - s.values).abs().max() / s.values.abs().max().clamp_min(1e-30))
        for m, s in enumerate(singles)
    ]
    return {
        "tests": len(example_ids),
        "k": cfg.k,
        "union_columns": len(many.columns),
        "batched_seconds": t1 - t0,
        "batched_stages": many.seconds,
        "single_seconds": t2 - t1,
        "single_stages": {k: sum(s.seconds[k] for s in singles) for k in singles[0].seconds},
        "speedup": (t2 - t1) / (t1 - t0),
        "max_rel_diff": max(diffs),
    }


def full_matrix(
    loaded: Any, example_ids: Sequence[str], cfg: InfluenceConfig, row_block: int
) -> dict[str, Any]:
    """The full matrix of the examples (stored in the workspace; a stored one is recomputed only if absent)."""
    from fastif_core.queries.matrix import influence_matrix

    out = influence_matrix(loaded, example_ids, cfg, full=True, row_block=row_block)
    return out.to_dict() | {"test_ids": len(out.test_ids)}


def crossover(loaded: Any, ms: Sequence[int], candidates: int, jvp_max_m: int = 2) -> dict[str, Any]:
    """Seconds per (candidate, test) pair of both scoring paths against M; the smallest M where
    per-example gradients are measured faster, and where the cost model switches."""
    from fastif_core.benchmarks.scoring import scoring_benchmark

    result = scoring_benchmark(loaded.objective, loaded.train, candidates, ms, jvp_max_m=jvp_max_m)
    per_pair = {
        m: {p: 1.0 / row[p]["pairs_per_s"] for p in ("jvp", "per_example")} | {"auto": row["auto_choice"]}
        for m, row in result["rows"].items()
    }
    measured = next((int(m) for m, r in per_pair.items() if r["per_example"] < r["jvp"]), None)
    model = next((int(m) for m, r in per_pair.items() if r["auto"] == "per_example"), None)
    return {
        "seconds_per_pair": per_pair,
        "measured_crossover_m": measured,
        "cost_model_crossover_m": model,
        "raw": result,
    }


def run_section(
    loaded: Any,
    example_ids: Sequence[str],
    matrix_ids: Sequence[str],
    cfg: InfluenceConfig,
    out: Path,
    *,
    row_block: int = 32,
    ms: Sequence[int] = (1, 2, 4, 16, 32),
    candidates: int = 64,
    progress: Any = None,
) -> dict[str, Any]:
    """All four figures side by side (the full matrix only with ``matrix_ids``, batched vs single only with
    ``example_ids``), written to
    ``out/many.json`` after each one (resumable by hand)."""
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "device": str(loaded.objective.device),
        "threads": torch.get_num_threads(),
        "config": to_dict(cfg),
        "num_train": len(loaded.train_ids),
        "trainable_params": loaded.objective.num_params,
    }
    steps = (
        ("store", lambda: store_benchmark()),
        ("crossover", lambda: crossover(loaded, ms, candidates)),
        ("batched", lambda: batched_vs_single(loaded, example_ids, cfg)),
        ("full", lambda: full_matrix(loaded, matrix_ids, cfg, row_block)),
    )
    # no matrix tests: the full matrix is measured elsewhere (`fastif matrix --full`); no many tests: no
    # batched-vs-single row (e.g. to measure the cross-over alone)
    steps = tuple(s for s in steps if (s[0] != "full" or matrix_ids) and (s[0] != "batched" or example_ids))
    for i, (name, fn) in enumerate(steps):
        if progress is not None:
            progress(i / len(steps), f"many: {name}")
        result[name] = fn()
        (out / "many.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="write/read time of an influence matrix in the store")
    parser.add_argument("what", choices=["store"])
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--cols", type=int, default=8000)
    parser.add_argument("--row-block", type=int, default=32)
    parser.add_argument("--col-block", type=int, default=1024)
    parser.add_argument("--url", default=None, help="a SQLAlchemy URL (default: a scratch SQLite file)")
    a = parser.parse_args(argv)
    print(json.dumps(store_benchmark(a.rows, a.cols, a.row_block, a.col_block, a.url), indent=2))


if __name__ == "__main__":
    main()
