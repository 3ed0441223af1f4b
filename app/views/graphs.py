"""Graphs: which training examples help or hurt which slices of the evaluation data (paper Sec. 6.2).

Launch a graph job (test set by slices, k nearest or full), follow it live, then explore a stored graph:
the circular bipartite picture in WebGL (helpful / harmful / side by side, a threshold on |I|, slice
filters; hover for the text, click a node to open its example), Table 4 and Table 5 with their counts,
both downloadable. Deep link: ``?graph=<id>``. Nothing is computed here: the worker builds graphs.
"""

from __future__ import annotations

import streamlit as st

from app import data_access as da
from app import graph_controls as gc
from app import graph_data as gd
from app import render, shell
from app.graph_figure import GraphView, correlation_figure, graph_figure

root = da.workspace_root()
state = da.workspace_state(root)
st.title("Influence graphs")
st.caption(
    "Test examples on the outer circle (one arc per slice), training examples inside, placed at the weighted "
    "geometric median of the test examples they influence. Negative influence = helpful, positive = harmful."
)

graphs = gd.list_graphs(root, state.model_id)
with st.expander("Compute a new graph", expanded=not graphs):
    config = gc.new_graph_controls(da.filter_options(root), state.num_train)
    if config is not None:
        st.session_state["graph_job"] = gd.enqueue_graph(root, config).id
shell.follow_job(root, "graph", "graph_job")
if not graphs:
    st.info("No graph is stored for this workspace's model yet: compute one above.")
    st.stop()

ids = [g.id for g in graphs]
wanted = st.query_params.get("graph", "")
chosen = st.selectbox(
    "Stored graph",
    ids,
    index=ids.index(int(wanted)) if wanted.isdigit() and int(wanted) in ids else 0,
    format_func=lambda i: gd.describe(next(g for g in graphs if g.id == i)),
    key="graph_id",
)
st.query_params["graph"] = str(chosen)
loaded = gd.load(root, int(chosen))
if loaded is None:
    st.error(f"Graph #{chosen} no longer exists.")
    st.stop()
result = loaded.info.result
view = GraphView.of(loaded.arrays, list(result["slices"]), loaded.examples)
s = result["seconds"]
st.caption(
    f"{result['num_nodes']:,} nodes ({result['num_test_nodes']} test, {result['num_train_nodes']:,} training) · "
    f"{result['num_edges']:,} edges · computed in {s['total']:.0f} s (influence {s['influence']:.0f} s, layout "
    f"{s['layout']:.2f} s) · test set {', '.join(f'{k} {v}' for k, v in result['test_set'].items())}"
)

settings = gc.view_controls(view.slices, view.max_abs(), key=f"g{chosen}", start=view.default_threshold())
columns = st.columns(len(settings.sides))
for col, side in zip(columns, settings.sides, strict=True):
    with col:
        fig = graph_figure(
            view, side, settings.threshold, settings.slices, height=720 if len(columns) == 1 else 560
        )
        event = st.plotly_chart(
            fig,
            on_select="rerun",
            selection_mode="points",
            key=f"plot_{chosen}_{side}",
            config={"displaylogo": False, "scrollZoom": True},
        )
        points = [p for p in event.selection.points if p.get("customdata")]
        if points:
            st.switch_page(render.EXAMPLE_PAGE, query_params={"example": str(points[0]["customdata"][0])})
st.caption("Click a node to open its example. Scroll to zoom, drag to pan, double-click to reset.")

st.subheader("Slice statistics (Table 4)")
stats = gd.statistics_frame(result)
st.dataframe(stats, hide_index=True, width="stretch")
st.download_button(
    "Download slice statistics (CSV)",
    stats.to_csv(index=False),
    f"graph{chosen}_statistics.csv",
    "text/csv",
    icon=":material/download:",
)
st.subheader("Slice correlations (Table 5)")
st.plotly_chart(correlation_figure(result["correlation"]), width="stretch", key=f"corr_{chosen}")
corr = gd.correlation_frame(result)
with st.expander("Correlation table"):
    st.dataframe(corr, hide_index=True, width="stretch")
st.download_button(
    "Download slice correlations (CSV)",
    corr.to_csv(index=False),
    f"graph{chosen}_correlations.csv",
    "text/csv",
    icon=":material/download:",
)
