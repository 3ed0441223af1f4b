"""Widgets of the Graphs page that only return parameters: the new-graph form and the view settings."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from app.controls import PRESET_LABELS, FilterOptions
from app.graph_figure import DEFAULT_MAX_EDGES, SLIDER_STEPS
from fastif_core.apps.graph.config import SLICE_BY, GraphConfig
from fastif_core.config import InfluenceConfig, STestConfig, help_of

VIEWS = ("Helpful", "Harmful", "Side by side")


@dataclass(frozen=True)
class ViewSettings:
    sides: tuple[str, ...]  # ("helpful",), ("harmful",) or both
    threshold: float
    slices: list[str]


def new_graph_controls(options: FilterOptions, num_train: int) -> GraphConfig | None:
    """The "Compute graph" form (defaults: the paper's test set, k = 1000); the config when submitted."""
    d = GraphConfig()
    with st.form("graph_form", border=True):
        c1, c2, c3, c4 = st.columns(4)
        per_slice = c1.number_input(
            "Test examples per slice", 1, 10_000, d.per_slice, help=help_of(GraphConfig, "per_slice")
        )
        slice_by = c2.selectbox("Slices", SLICE_BY, help=help_of(GraphConfig, "slice_by"))
        k = c3.number_input(
            "k neighbours",
            1,
            max(1, num_train),
            min(InfluenceConfig().k or 1, max(1, num_train)),
            help=help_of(InfluenceConfig, "k"),
        )
        preset = c4.selectbox("s_test solver", list(PRESET_LABELS), format_func=PRESET_LABELS.__getitem__)
        f1, f2, f3 = st.columns(3)
        dataset = f1.multiselect("Dataset", options.datasets, placeholder="All", key="g_dataset")
        heuristic = f2.multiselect("HANS heuristic", options.heuristics, placeholder="All", key="g_heuristic")
        label = f3.multiselect("Gold label", options.labels, placeholder="All", key="g_label")
        t1, t2 = st.columns(2)
        incorrect = t1.toggle(
            "Incorrect predictions only", d.incorrect_only, help=help_of(GraphConfig, "incorrect_only")
        )
        full = t2.toggle("Full mode (all training examples)", False)
        submitted = st.form_submit_button("Compute graph", type="primary", icon=":material/hub:")
    if not submitted:
        return None
    influence = InfluenceConfig(s_test=STestConfig.preset(preset), k=None if full else int(k), top=1)
    return GraphConfig(
        per_slice=int(per_slice),
        incorrect_only=bool(incorrect),
        slice_by=slice_by,
        dataset=tuple(dataset),
        heuristic=tuple(heuristic),
        label=tuple(label),
        influence=influence,
    )


def view_controls(slices: list[str], max_abs: float, key: str, start: float = 0.0) -> ViewSettings:
    """Helpful / harmful / side by side, the |I| threshold (starting at ``start``) and the slices shown."""
    c1, c2, c3 = st.columns([1, 1, 2])
    view = c1.segmented_control("Edges", VIEWS, default="Helpful", key=f"{key}_view") or "Helpful"
    top = float(max_abs) if max_abs > 0 else 1.0
    threshold = c2.slider(
        "Threshold on |I|",
        0.0,
        top,
        min(float(start), top),
        step=top / SLIDER_STEPS,
        format="%.3g",
        key=f"{key}_threshold",
        help=f"starts where at most {DEFAULT_MAX_EDGES:,} edges per side remain; drag to 0 for every edge",
    )
    chosen = c3.multiselect("Slices shown", slices, default=slices, key=f"{key}_slices") or slices
    sides = ("helpful", "harmful") if view == "Side by side" else (view.lower(),)
    return ViewSettings(sides, float(threshold), list(chosen))
