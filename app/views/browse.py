"""Browse: filter the examples, see counts and accuracy, click a row to open the example."""

from __future__ import annotations

import streamlit as st

from app import controls, render
from app import data_access as da
from app import formatting as fmt

root = da.workspace_root()
st.title("Browse examples")
version = da.data_version(root)  # the cached counts are recomputed when the build or the model changes
filters = controls.browse_filters_controls(da.filter_options(root, version))
summary = da.browse_summary(root, filters, version)
ranked = da.self_influence(root)  # stored by `fastif sketch --self-influence` (gradient sketches)
by_self_influence = ranked is not None and st.toggle(
    "Training examples by self-influence",
    key="by_self_influence",
    help="φᵀH⁻¹φ of each training example from its gradient sketch, largest first: the classic search for "
    "mislabelled or atypical examples (the filters above do not apply)",
)
render.summary_metrics(summary)
if by_self_influence:
    frame = ranked
    st.caption(f"The {len(frame):,} training examples of largest self-influence.")
else:
    rows, page = controls.page_controls(summary.count, signature=repr(filters), key="browse")
    frame = da.browse_page(root, filters, page - 1, rows)
    if summary.count > len(frame):
        first = (page - 1) * rows
        st.caption(
            f"Rows {first + 1:,}–{first + len(frame):,} of {summary.count:,} matching examples, in id order."
        )
if frame.empty:
    st.info("No example matches these filters. Clear a filter or change the search text.")
    st.stop()
st.caption("Click a row to open the example: its prediction, nearest training neighbours and influence.")
selected = render.examples_table(frame)
if selected:
    st.switch_page(render.EXAMPLE_PAGE, query_params={"example": str(frame.iloc[selected[0]]["id"])})
if st.toggle(
    "Accuracy by slice", key="by_slice", help="counts and accuracy per value of a column, under the filters"
):
    column = st.segmented_control(
        "Group by",
        ["dataset", "split", "label", "genre", "heuristic", "subcase"],
        default="split",
        key="group_by",
    )
    groups = da.accuracy_by(root, column or "split", filters, version)
    st.dataframe(
        [
            {
                "value": fmt.pretty(g.value),
                "examples": g.count,
                "predicted": g.predicted,
                "accuracy": "—" if g.accuracy is None else f"{g.accuracy:.1%}",
            }
            for g in groups
        ],
        hide_index=True,
    )
