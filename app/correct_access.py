"""The Correct page's reads (cached briefly) and the jobs it enqueues: ``correct`` (a run, or saving one
of its methods' final model as a version) and ``activate_model`` (switch the served version).
Nothing here runs torch work; the worker does."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pandas as pd
import streamlit as st

from app.data_access import store, workspace_state
from fastif_core import jobs
from fastif_core.apps.correct import stored as stored_runs
from fastif_core.apps.correct.config import ActivateParams, CorrectConfig
from fastif_core.store import AppResultInfo, JobInfo
from fastif_core.workspace import versions


@st.cache_data(ttl=30, show_spinner=False)
def slice_options(root: str) -> dict[str, list[str]]:
    """Values of each slice field among the evaluation examples (not the training set)."""
    s = store(root)
    cols = ("dataset", "heuristic", "subcase", "genre", "label")
    return {c: [str(v) for v in s.distinct_values(c, in_training_set=False)] for c in cols}


@st.cache_data(ttl=5, show_spinner=False)
def runs(root: str) -> list[AppResultInfo]:
    """Stored correction / augmentation runs of the served model, newest first."""
    return store(root).list_app_results("correction", model_id=workspace_state(root).model_id, limit=50)


def run(root: str, run_id: int) -> AppResultInfo | None:
    return store(root).get_app_result("correction", run_id)


@st.cache_data(ttl=5, show_spinner=False)
def comparisons(root: str) -> list[dict[str, Any]]:
    """The served model's stored runs merged per comparison (runs that differ only in their seeds), newest first."""
    merged = stored_runs.stored_comparisons(root, model_id=workspace_state(root).model_id)
    return sorted(merged, key=lambda m: max(m["run_ids"]), reverse=True)


def import_runs(root: str, paths: list[str]) -> list[dict[str, Any]]:
    """Store runs made in another workspace (``fastif corrections --import``); the lists show them at once."""
    done = stored_runs.import_runs(root, paths)
    runs.clear()
    comparisons.clear()
    return done


@st.cache_data(ttl=5, show_spinner=False)
def model_versions(root: str) -> list[dict[str, Any]]:
    return versions.list_versions(root)


@st.cache_data(ttl=10, show_spinner=False)
def comparison(root: str, a: int, b: int) -> dict[str, Any]:
    return versions.compare(root, a, b, limit=500)


def enqueue_correct(root: str, cfg: CorrectConfig) -> JobInfo:
    """Queue a run for the served model (the same settings twice = one job)."""
    return jobs.enqueue(store(root), "correct", replace(cfg, model_id=workspace_state(root).model_id))


def enqueue_activate(root: str, model_id: int) -> JobInfo:
    return jobs.enqueue(store(root), "activate_model", ActivateParams(model_id=model_id))


def config_of(run: AppResultInfo) -> CorrectConfig:
    """The settings a stored run was computed with."""
    return CorrectConfig.from_json_dict(dict(run.config))


def curves_frame(result: dict[str, Any], metric: str) -> pd.DataFrame:
    """One row per (part, method, iteration): mean, min and max over seeds (iteration 0 = before)."""
    rows = []
    for method, m in result["methods"].items():
        for part, series in m["summary"].items():
            if metric in series:
                s = series[metric]
                rows += [
                    {
                        "part": part,
                        "method": method,
                        "iteration": i,
                        "mean": s["mean"][i],
                        "min": s["min"][i],
                        "max": s["max"][i],
                    }
                    for i in range(len(s["mean"]))
                ]
    return pd.DataFrame(rows, columns=["part", "method", "iteration", "mean", "min", "max"])


def before_after_frame(result: dict[str, Any]) -> pd.DataFrame:
    """Accuracy before and after per part and method: mean [min, max] over seeds, and the change."""
    rows = []
    for part, before in result["before"].items():
        for method, m in result["methods"].items():
            acc = m["summary"].get(part, {}).get("accuracy")
            if acc:
                rows.append(
                    {
                        "part": part,
                        "n": before["n"],
                        "method": method,
                        "before": before["accuracy"],
                        "after": acc["mean"][-1],
                        "min": acc["min"][-1],
                        "max": acc["max"][-1],
                        "change": acc["mean"][-1] - before["accuracy"],
                    }
                )
    return pd.DataFrame(rows)
