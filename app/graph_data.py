"""Store reads and the one write (enqueue) of the Graphs page; no torch, no computation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st

from app import data_access as da
from fastif_core import jobs
from fastif_core.apps.graph.config import GraphConfig
from fastif_core.store import AppResultInfo, JobInfo
from fastif_core.store.graph_files import GraphArrays, load_graph_arrays


@dataclass(frozen=True)
class LoadedGraph:
    info: AppResultInfo
    arrays: GraphArrays
    examples: dict[str, Any]  # node id -> ExampleRow (with the graph model's prediction)


@st.cache_data(ttl=10, show_spinner=False)
def list_graphs(root: str, model_id: int | None) -> list[AppResultInfo]:
    """Stored graphs of the workspace's model, newest first."""
    return da.store(root).list_app_results("graph", model_id=model_id, limit=100)


@st.cache_data(ttl=600, show_spinner="Loading the graph…", max_entries=4)
def load(root: str, graph_id: int) -> LoadedGraph | None:
    """A stored graph with its arrays and its nodes' examples (read once, then cached)."""
    s = da.store(root)
    info = s.get_app_result("graph", graph_id)
    if info is None:
        return None
    arrays = load_graph_arrays(root, info.result["arrays"])
    rows = s.get_examples(arrays.test_ids + arrays.train_ids, info.model_id)
    return LoadedGraph(info, arrays, {r.id: r for r in rows})


def enqueue_graph(root: str, cfg: GraphConfig) -> JobInfo:
    """Queue the graph for the workspace's model (an equal queued, running or done job is reused)."""
    model_id = da.workspace_state(root).model_id
    return jobs.enqueue(da.store(root), "graph", cfg.with_model(model_id) if model_id is not None else cfg)


def statistics_frame(result: dict[str, Any]) -> pd.DataFrame:
    """Table 4: one row per slice."""
    return pd.DataFrame(result["statistics"]).rename(
        columns={
            "test_examples": "test examples",
            "train_nodes": "training nodes",
            "helpful_edges": "helpful edges",
            "harmful_edges": "harmful edges",
            "helpful_mean_abs": "mean |I| helpful",
            "harmful_mean_abs": "mean |I| harmful",
            "mean": "mean I",
        }
    )


def correlation_frame(result: dict[str, Any]) -> pd.DataFrame:
    """Table 5 long form: one row per pair of slices, the correlation and its count."""
    t = result["correlation"]
    return pd.DataFrame(
        [
            {
                "slice 1": a,
                "slice 2": b,
                "pearson": t["pearson"][i][j],
                "shared training examples": t["count"][i][j],
            }
            for i, a in enumerate(t["slices"])
            for j, b in enumerate(t["slices"])
        ]
    )


def describe(info: AppResultInfo) -> str:
    r, c = info.result, info.config
    influence = c.get("influence") or {}
    k = "full" if "k" in influence and influence["k"] is None else f"k={influence.get('k', '—')}"
    return (
        f"#{info.id} · {r['num_test_nodes']} test / {r['num_train_nodes']} training nodes · {r['num_edges']:,} edges · "
        f"{k} · {', '.join(r['slices'])}"
    )
