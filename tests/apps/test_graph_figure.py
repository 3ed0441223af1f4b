"""app.graph_figure and apps.graph.selection, pure: edges binned into at most three WebGL traces per sign
(every shown edge drawn exactly once, none below the threshold or outside the chosen slices), nodes
carrying their example ids for the click-through; the seeded per-slice test-set sample and the auto
slicing (heuristics of HANS-style datasets only)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from app.graph_figure import GraphView, correlation_figure, graph_figure, shown_edges, threshold_for  # noqa: E402
from fastif_core.apps.graph.selection import choose  # noqa: E402
from fastif_core.store.records import ExampleRow  # noqa: E402


def view(seed: int = 0, tests: int = 30, nodes: int = 200, edges: int = 3000) -> GraphView:
    rng = np.random.default_rng(seed)
    test_slice = np.sort(rng.integers(0, 3, tests))
    ang = rng.uniform(0, 2 * np.pi, tests)
    xy = rng.uniform(-0.5, 0.5, (nodes, 2))
    return GraphView(
        slices=["a", "b", "c"],
        test_ids=[f"t{j}" for j in range(tests)],
        train_ids=[f"n{i}" for i in range(nodes)],
        test_slice=test_slice,
        test_xy=np.c_[np.cos(ang), np.sin(ang)],
        node_xy={"helpful": xy, "harmful": -xy},
        edge_test=rng.integers(0, tests, edges),
        edge_train=rng.integers(0, nodes, edges),
        edge_value=rng.normal(size=edges),
        examples={},
    )


def line_traces(fig: go.Figure) -> list:
    return [t for t in fig.data if t.mode == "lines"]


def test_edges_are_binned_into_three_traces_and_each_shown_edge_is_drawn_once():
    v = view()
    fig = graph_figure(v, "harmful", 0.5, ["a", "c"])
    lines = line_traces(fig)
    assert len(lines) == 3 and all(isinstance(t, go.Scattergl) for t in fig.data)
    expected = (v.edge_value >= 0.5) & np.isin(v.test_slice[v.edge_test], [0, 2])
    assert sum(len(t.x) // 3 for t in lines) == int(expected.sum())
    assert [t.line.width for t in lines] == sorted(t.line.width for t in lines)  # strongest third boldest
    ends = {(round(t.x[i + 1], 9), round(t.y[i + 1], 9)) for t in lines for i in range(0, len(t.x), 3)}
    allowed = {(round(x, 9), round(y, 9)) for x, y in v.test_xy[np.isin(v.test_slice, [0, 2])]}
    assert ends <= allowed  # every edge ends on a test node of a chosen slice


def test_default_threshold_keeps_at_most_max_edges_per_side_on_the_slider_grid():
    values = np.r_[-np.arange(1, 101) / 10.0, np.arange(1, 31) / 10.0]  # 100 helpful, 30 harmful
    t = threshold_for(values, 20, 0.25)
    assert t == 8.25  # the 21st strongest helpful |I| is 8.0: the next grid point above it
    assert (values <= -t).sum() <= 20 and (values >= t).sum() <= 20
    assert (values <= -(t - 0.25)).sum() > 20  # one step lower shows too many
    assert threshold_for(values, 100, 0.25) == 0.0  # every side fits: all edges
    assert view().default_threshold(max_edges=10**6) == 0.0


def test_helpful_side_uses_the_negative_edges_and_the_helpful_layout():
    v = view(1)
    edges = shown_edges(v, "helpful", 0.0, v.slices)
    assert np.all(v.edge_value[edges] < 0) and edges.size == int((v.edge_value < 0).sum())
    lines = line_traces(graph_figure(v, "helpful", 0.0, v.slices))
    starts = {(round(t.x[i], 9), round(t.y[i], 9)) for t in lines for i in range(0, len(t.x), 3)}
    assert starts <= {(round(x, 9), round(y, 9)) for x, y in v.node_xy["helpful"]}


def test_nodes_carry_their_example_ids_and_training_nodes_without_shown_edges_are_hidden():
    v = view(2)
    fig = graph_figure(v, "harmful", 2.0, ["b"])
    markers = [t for t in fig.data if t.mode == "markers"]
    tests = [t for t in markers if t.name.startswith("test:")]
    assert [t.name for t in tests] == ["test: b"]
    assert {c[0] for c in tests[0].customdata} == {v.test_ids[j] for j in np.flatnonzero(v.test_slice == 1)}
    shown = shown_edges(v, "harmful", 2.0, ["b"])
    trains = {c[0] for t in markers if t.name.startswith("train:") for c in t.customdata}
    assert trains == {v.train_ids[i] for i in v.edge_train[shown]}


def test_correlation_heatmap_shows_each_count_and_blanks_undefined_cells():
    fig = correlation_figure(
        {"slices": ["a", "b"], "pearson": [[1.0, None], [None, 1.0]], "count": [[4, 0], [0, 3]]}
    )
    heat = fig.data[0]
    assert heat.text[0][1] == "—<br>n=0" and heat.text[1][1] == "+1.00<br>n=3" and np.isnan(heat.z[0][1])


def row(i: int, dataset: str, heuristic: str | None) -> ExampleRow:
    return ExampleRow(
        id=f"{dataset}:{i}",
        dataset=dataset,
        split="dev",
        premise="p",
        hypothesis="h",
        label="entailment",
        slices={"heuristic": heuristic} if heuristic else {},
        extra={},
    )


def test_auto_slices_split_hans_by_heuristic_and_keep_other_datasets_whole():
    rows = [row(i, "hans", h) for i, h in enumerate(["lexical_overlap", "subsequence"] * 10)]
    rows += [row(i, "mnli", "lexical_overlap" if i % 2 else None) for i in range(15)]
    chosen = choose(rows, "auto", 4, seed=0, hans=frozenset({"hans"}))
    assert chosen.slices == ["lexical_overlap", "mnli", "subsequence"] and chosen.counts() == dict.fromkeys(
        chosen.slices, 4
    )
    assert all(i.startswith("mnli") for i, s in zip(chosen.ids, chosen.slice_index, strict=False) if s == 1)
    again = choose(list(reversed(rows)), "auto", 4, seed=0, hans=frozenset({"hans"}))
    assert again == chosen  # a seeded sample of the sorted ids: the input order does not matter
    other = choose(rows, "auto", 4, seed=1, hans=frozenset({"hans"}))
    assert other.ids != chosen.ids and choose(rows, "dataset", 100, 0).counts() == {"hans": 20, "mnli": 15}
