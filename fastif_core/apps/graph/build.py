"""The graph pipeline: test set by slices → influence matrix → edges → layout → Tables 4 and 5 → store.

:func:`build_graph` is what the ``graph`` job, ``fastif graph`` and the tests call. It is computed once
per (model, settings): asking again returns the stored graph. The arrays go to a safetensors file
(:mod:`fastif_core.store.graph_files`), the summary to the ``graphs`` table, with the job's ``done`` in
the same transaction when a worker runs it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from fastif_core.apps.graph import layout, stats
from fastif_core.apps.graph.config import GraphConfig
from fastif_core.apps.graph.influences import graph_influences
from fastif_core.apps.graph.selection import Selection, select_test_set
from fastif_core.config import config_hash
from fastif_core.errors import ConfigError, JobError
from fastif_core.progress import Progress
from fastif_core.store.graph_files import GraphArrays, save_graph_arrays

INFLUENCE_SHARE = 0.97  # of the progress bar: the influence rows; the layout and tables are the rest


def edges_of(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(train_pos (T,), edge_test (E,), edge_train (E,), edge_value (E,))`` of an ``(M, N)`` matrix
    with ``NaN`` for non-edges; training nodes are the columns with at least one edge."""
    present = ~np.isnan(values)
    train_pos = np.flatnonzero(present.any(axis=0))  # (T,)
    node_of = np.full(values.shape[1], -1, dtype=np.int64)
    node_of[train_pos] = np.arange(train_pos.size)
    edge_test, col = np.nonzero(present)
    return train_pos, edge_test.astype(np.int32), node_of[col].astype(np.int32), values[edge_test, col]


def side_layout(arrays: dict[str, np.ndarray], sign: int, cfg: GraphConfig) -> tuple[np.ndarray, int]:
    """Training node positions over the helpful (``sign`` −1) or harmful (+1) edges only."""
    keep = np.sign(arrays["edge_value"]) == sign
    return layout.geometric_medians(
        arrays["edge_train"][keep],
        arrays["edge_test"][keep],
        np.abs(arrays["edge_value"][keep]),
        arrays["test_xy"],
        len(arrays["train_pos"]),
        radius=cfg.inner_radius,
        iterations=cfg.layout_iterations,
    )


def graph_arrays(
    values: np.ndarray, test: Selection, cfg: GraphConfig
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Edges and both layouts of the matrix; also the layout's iterations."""
    train_pos, edge_test, edge_train, edge_value = edges_of(values)
    test_slice = np.asarray(test.slice_index, dtype=np.int32)
    arrays = {
        "test_slice": test_slice,
        "train_pos": train_pos.astype(np.int64),
        "edge_test": edge_test,
        "edge_train": edge_train,
        "edge_value": edge_value.astype(np.float32),
        "test_xy": layout.circle_positions(test_slice, len(test.slices), jitter=cfg.jitter, seed=cfg.seed),
    }
    arrays["helpful_xy"], helpful_iters = side_layout(arrays, -1, cfg)
    arrays["harmful_xy"], harmful_iters = side_layout(arrays, +1, cfg)
    return arrays, {"helpful": helpful_iters, "harmful": harmful_iters}


def summary(values: np.ndarray, test: Selection, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The small part of a graph: sizes, the test set per slice, Table 4, Table 5 with counts."""
    num_train = len(arrays["train_pos"])
    return {
        "num_nodes": len(test.ids) + num_train,
        "num_test_nodes": len(test.ids),
        "num_train_nodes": num_train,
        "num_edges": int(arrays["edge_value"].size),
        "slices": list(test.slices),
        "test_set": test.counts(),
        "statistics": stats.slice_statistics(values, arrays["test_slice"], test.slices),
        "correlation": stats.correlation_table(values, arrays["test_slice"], test.slices),
    }


def check_request(manifest: dict[str, Any], cfg: GraphConfig) -> int:
    """Validate the settings against the workspace before any work; returns the model id."""
    cfg.validate()
    model_id = int(manifest["model_id"])
    if cfg.model_id is not None and int(cfg.model_id) != model_id:
        raise JobError(f"model_id={cfg.model_id} is not this workspace's model ({model_id})")
    k, n = cfg.influence.k, int(manifest["num_train"])
    if k is not None and k > n:
        raise ConfigError(f"k={k} is larger than the training set ({n} examples): use k <= {n} or --full")
    return model_id


def preflight(root: str | Path, cfg: GraphConfig) -> int:
    """Everything that can be checked before any work (settings, k, a non-empty test set); the model id."""
    from fastif_core.store import Store
    from fastif_core.workspace.layout import require_prepared

    model_id = check_request(require_prepared(root), cfg)
    with Store.open(root) as store:
        select_test_set(store, cfg.with_model(model_id), model_id)
    return model_id


def build_graph(
    root: str | Path,
    cfg: GraphConfig,
    *,
    device: str = "cpu",
    loaded: Any = None,
    progress: Progress | None = None,
    job_id: int | None = None,
    owner: str | None = None,
) -> dict[str, Any]:
    """Compute (or find) the graph of ``cfg`` on the workspace ``root``; returns :func:`graph_to_dict`."""
    from fastif_core.store import Store
    from fastif_core.workspace.layout import LoadedWorkspace, require_prepared

    model_id = check_request(require_prepared(root), cfg)
    cfg = cfg.with_model(model_id)
    key = config_hash(cfg.stored())
    with Store.open(root) as store:
        found = store.find_app_result("graph", key, model_id=model_id)
        if found is not None:
            return graph_to_dict(found, cached=True)
        t0 = time.perf_counter()
        test = select_test_set(store, cfg, model_id)
        ts = time.perf_counter()
    loaded = loaded or LoadedWorkspace.load(root, device)
    t1 = time.perf_counter()
    within = None if progress is None else (lambda f, m: progress(INFLUENCE_SHARE * f, m))
    values, _, matrix = graph_influences(
        loaded,
        test.ids,
        cfg.influence,
        cfg.influence.k,
        cfg.influence.full,
        within,
        row_block=cfg.row_block,
        sketch=cfg.sketch if cfg.method == "sketch" else None,
    )
    t2 = time.perf_counter()
    if progress is not None:
        progress(INFLUENCE_SHARE, "layout (Weiszfeld) and slice tables")
    arrays, iterations = graph_arrays(values, test, cfg)
    t3 = time.perf_counter()
    result = summary(values, test, arrays)
    t4 = time.perf_counter()
    train_ids = [loaded.train_ids[int(p)] for p in arrays["train_pos"]]
    relative = save_graph_arrays(root, f"model{model_id}-{key}", GraphArrays(arrays, test.ids, train_ids))
    result |= {
        "arrays": relative,
        "influence_matrix": matrix,
        "layout_iterations": iterations,
        "seconds": {
            "selection": ts - t0,
            "load": t1 - ts,
            "influence": t2 - t1,
            "layout": t3 - t2,
            "statistics": t4 - t3,
            "total": t4 - t0,
        },
    }
    with Store.open(root) as store:
        info = store.save_app_result(
            "graph", cfg.stored(), result, model_id=model_id, job_id=job_id, owner=owner, config_hash=key
        )
    return graph_to_dict(info, cached=False)


def graph_to_dict(info: Any, *, cached: bool) -> dict[str, Any]:
    """The JSON answer of ``fastif graph``: the graph id, its settings and its summary."""
    return {
        "graph_id": info.id,
        "model_id": info.model_id,
        "config": info.config,
        **info.result,
        "cached": cached,
    }
