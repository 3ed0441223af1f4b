"""The influence graph as a plotly WebGL figure (no queries, no Streamlit): test nodes on the outer
circle coloured by slice, training nodes inside coloured by gold label (the app's label palette), edges
binned by magnitude into a few ``Scattergl`` line traces per sign (one trace per bin, never one per
edge), so 100,000 edges are a handful of traces. Every node carries its example id as ``customdata``
(the page opens that example on a click)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go

from app import palette

SLICE_COLORS = ("#7048e8", "#1098ad", "#f08c00", "#d6336c", "#5c940d", "#4263eb", "#ae3ec9", "#0ca678")
SIDES = ("helpful", "harmful")
BINS = ((0.6, 0.12), (1.2, 0.3), (2.2, 0.65))  # (line width, opacity) from the weakest to the strongest third
HOVER_CHARS = 140
CROWD = 3000  # edges per magnitude bin above which the bin's opacity is lowered as 1/sqrt(count)


DEFAULT_MAX_EDGES = 20_000  # edges per side drawn at first (the slider shows the rest)
SLIDER_STEPS = 1000


@dataclass(frozen=True)
class GraphView:
    """What the figure draws: positions, edges and the nodes' examples (id -> ExampleRow or None)."""

    slices: list[str]
    test_ids: list[str]
    train_ids: list[str]
    test_slice: np.ndarray  # (M,)
    test_xy: np.ndarray  # (M, 2)
    node_xy: dict[str, np.ndarray]  # side -> (T, 2), NaN for nodes without an edge of that sign
    edge_test: np.ndarray  # (E,)
    edge_train: np.ndarray  # (E,)
    edge_value: np.ndarray  # (E,)
    examples: dict[str, Any]

    @classmethod
    def of(cls, arrays: Any, slices: list[str], examples: dict[str, Any]) -> GraphView:
        a = arrays.arrays
        return cls(
            slices,
            arrays.test_ids,
            arrays.train_ids,
            a["test_slice"],
            a["test_xy"],
            {"helpful": a["helpful_xy"], "harmful": a["harmful_xy"]},
            a["edge_test"],
            a["edge_train"],
            a["edge_value"],
            examples,
        )

    def max_abs(self) -> float:
        return float(np.abs(self.edge_value).max()) if self.edge_value.size else 0.0

    def default_threshold(self, max_edges: int = DEFAULT_MAX_EDGES, steps: int = SLIDER_STEPS) -> float:
        """The slider's first position: the smallest |I| on the slider's grid (``steps`` steps up to
        :meth:`max_abs`) at which at most ``max_edges`` edges of either sign remain, 0 when all fit."""
        return threshold_for(
            self.edge_value, max_edges, self.max_abs() / steps if self.max_abs() > 0 else 1.0
        )


def threshold_for(values: np.ndarray, max_edges: int, step: float) -> float:
    """The smallest multiple of ``step`` at which ``|values| >= threshold`` holds for at most ``max_edges``
    helpful and at most ``max_edges`` harmful values (0 when each side has that few)."""
    out = 0.0
    for side in (values[values < 0], values[values > 0]):
        if side.size > max_edges:
            kth = np.partition(np.abs(side), side.size - max_edges - 1)[side.size - max_edges - 1]
            out = max(out, (np.floor(kth / step) + 1) * step)  # strictly above the (max_edges+1)-th
    return float(out)


def slice_color(s: int) -> str:
    return SLICE_COLORS[s % len(SLICE_COLORS)]


def shown_edges(view: GraphView, side: str, threshold: float, slices: list[str]) -> np.ndarray:
    """Indices of the edges of ``side``'s sign with ``|I| >= threshold`` into the chosen slices."""
    keep_slice = np.isin(np.arange(len(view.slices)), [view.slices.index(s) for s in slices])
    sign = -1.0 if side == "helpful" else 1.0
    v = view.edge_value
    return np.flatnonzero(
        (np.sign(v) == sign) & (np.abs(v) >= threshold) & keep_slice[view.test_slice[view.edge_test]]
    )


def _segments(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x and y of line segments a→b separated by gaps (NaN), for one Scattergl trace."""
    gap = np.full(len(a), np.nan)
    return np.column_stack([a[:, 0], b[:, 0], gap]).ravel(), np.column_stack([a[:, 1], b[:, 1], gap]).ravel()


def edge_traces(view: GraphView, side: str, edges: np.ndarray) -> list[go.Scattergl]:
    """One line trace per magnitude third of the shown edges (weak: thin and faint)."""
    if edges.size == 0:
        return []
    color = palette.HELPFUL_COLOR if side == "helpful" else palette.HARMFUL_COLOR
    mags = np.abs(view.edge_value[edges])
    cuts = np.quantile(mags, [1 / 3, 2 / 3])
    which = np.searchsorted(cuts, mags, side="right")  # 0, 1, 2
    traces = []
    for b, (width, opacity) in enumerate(BINS):
        sel = edges[which == b]
        if sel.size == 0:
            continue
        x, y = _segments(view.node_xy[side][view.edge_train[sel]], view.test_xy[view.edge_test[sel]])
        lo, hi = float(np.abs(view.edge_value[sel]).min()), float(np.abs(view.edge_value[sel]).max())
        faint = opacity * min(1.0, (CROWD / sel.size) ** 0.5)  # thousands of overlapping lines stay readable
        traces.append(
            go.Scattergl(
                x=x,
                y=y,
                mode="lines",
                line={"width": width, "color": color},
                opacity=max(faint, 0.03),
                hoverinfo="skip",
                name=f"{side} |I| {lo:.2g}–{hi:.2g} ({sel.size:,})",
            )
        )
    return traces


def _short(text: str) -> str:
    return text if len(text) <= HOVER_CHARS else text[: HOVER_CHARS - 1] + "…"


def _hover(example_id: str, row: Any, extra: str) -> str:
    if row is None:
        return f"<b>{example_id}</b><br>{extra}"
    pred = f" · predicted {row.predicted}" if row.predicted else ""
    return (
        f"<b>{example_id}</b> ({row.dataset}/{row.split})<br>gold {row.label}{pred}<br>{extra}<br>"
        f"P: {_short(row.premise)}<br>H: {_short(row.hypothesis)}"
    )


def _influence_by(index: np.ndarray, values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.bincount(index, values, n), np.bincount(index, minlength=n)


def node_traces(view: GraphView, side: str, edges: np.ndarray, slices: list[str]) -> list[go.Scattergl]:
    """Test nodes of the chosen slices (one trace per slice) and the training nodes with a shown edge
    (one trace per gold label); hover: id, labels, text, the summed influence of the shown edges."""
    traces = []
    v = view.edge_value[edges]
    t_sum, t_n = _influence_by(view.edge_test[edges], v, len(view.test_ids))
    for name in slices:
        s = view.slices.index(name)
        rows = np.flatnonzero(view.test_slice == s)
        text = [
            _hover(
                view.test_ids[j],
                view.examples.get(view.test_ids[j]),
                f"slice {name} · Σ I = {t_sum[j]:+.3g} over {t_n[j]} edges",
            )
            for j in rows
        ]
        traces.append(
            go.Scattergl(
                x=view.test_xy[rows, 0],
                y=view.test_xy[rows, 1],
                mode="markers",
                name=f"test: {name}",
                marker={"size": 9, "color": slice_color(s), "line": {"width": 1, "color": "white"}},
                customdata=[[view.test_ids[j]] for j in rows],
                hovertext=text,
                hoverinfo="text",
            )
        )
    n_sum, n_n = _influence_by(view.edge_train[edges], v, len(view.train_ids))
    nodes = np.flatnonzero(n_n > 0)
    labels = [
        (view.examples.get(view.train_ids[t]).label if view.examples.get(view.train_ids[t]) else "")
        for t in nodes
    ]
    for label in sorted(set(labels)):
        sel = nodes[np.asarray(labels) == label]
        text = [
            _hover(
                view.train_ids[t],
                view.examples.get(view.train_ids[t]),
                f"Σ I = {n_sum[t]:+.3g} over {n_n[t]} {side} edges",
            )
            for t in sel
        ]
        xy = view.node_xy[side][sel]
        traces.append(
            go.Scattergl(
                x=xy[:, 0],
                y=xy[:, 1],
                mode="markers",
                name=f"train: {label or '—'}",
                marker={"size": 5, "color": palette.label_color(label), "opacity": 0.85},
                customdata=[[view.train_ids[t]] for t in sel],
                hovertext=text,
                hoverinfo="text",
            )
        )
    return traces


def graph_figure(
    view: GraphView, side: str, threshold: float, slices: list[str], height: int = 720
) -> go.Figure:
    """The circular bipartite graph of ``side`` (helpful or harmful edges) above ``threshold``."""
    edges = shown_edges(view, side, threshold, slices)
    fig = go.Figure([*edge_traces(view, side, edges), *node_traces(view, side, edges, slices)])
    axis = {"visible": False, "range": [-1.12, 1.12], "fixedrange": False}
    fig.update_layout(
        title=f"{side.capitalize()} edges: {edges.size:,} with |I| ≥ {threshold:.3g}",
        height=height,
        xaxis=axis,
        yaxis={**axis, "scaleanchor": "x"},
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        legend={"orientation": "h", "y": -0.02},
        clickmode="event+select",
        dragmode="pan",
        uirevision=side,
        plot_bgcolor="white",
    )
    return fig


def correlation_figure(table: dict[str, Any]) -> go.Figure:
    """Table 5 as a heatmap: each cell the Pearson correlation and its count of shared training examples."""
    names, corr, count = table["slices"], table["pearson"], table["count"]
    z = [[np.nan if c is None else c for c in row] for row in corr]
    text = [
        [("—" if c is None else f"{c:+.2f}") + f"<br>n={n}" for c, n in zip(row, nrow, strict=True)]
        for row, nrow in zip(corr, count, strict=True)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=names,
            y=names,
            text=text,
            texttemplate="%{text}",
            zmin=-1,
            zmax=1,
            colorscale="RdBu",
            reversescale=True,
            hoverongaps=False,
            hovertemplate="%{y} × %{x}: %{text}<extra></extra>",
        )
    )
    fig.update_layout(
        height=120 + 60 * len(names),
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        yaxis={"autorange": "reversed"},
        title="Slice correlations (n = shared training examples)",
    )
    return fig
