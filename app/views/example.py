"""Example: text, prediction, nearest training neighbours, and its most influential training examples.

Deep link: ``?example=<id>``. Computing influence enqueues a job; its progress shows live and the
ranked lists appear when the worker has stored them. Stored results show at once.
"""

from __future__ import annotations

import streamlit as st

from app import controls, render, shell, sketch_view
from app import data_access as da
from app import formatting as fmt

root = da.workspace_root()
state = da.workspace_state(root)
example_id = st.query_params.get("example", "").strip()

if not example_id:
    st.title("Example")
    st.info("Open an example from the Browse page, or type its id.")
    typed = st.text_input("Example id", key="example_id_input").strip()
    if typed:
        st.query_params["example"] = typed
        st.rerun()
    st.page_link("views/browse.py", label="Browse examples", icon=":material/table_rows:")
    st.stop()

ex = da.example(root, example_id)
if ex is None:
    st.title("Example")
    st.error(
        f"There is no example with id {fmt.code(example_id)} in this workspace. The link may be from another workspace."
    )
    st.page_link("views/browse.py", label="Browse examples", icon=":material/table_rows:")
    st.stop()

render.example_header(ex)
render.prediction_block(ex, state.labels)
neighbors = da.neighbors(root, ex.id)
with st.expander(f"Nearest training neighbours ({len(neighbors)})", expanded=False):
    if state.approximate_neighbours:
        st.caption(
            f"Approximate: searched with {state.approximate_neighbours} (`fastif prepare --neighbors-index`); "
            "the influence candidates below use the workspace's own index."
        )
    render.neighbors_table(neighbors)
neighbor_ids = {n.train_id for n in neighbors}

st.subheader("Influential training examples")
# sketches stored: the whole-training-set click (gradient sketches, issue 27)
if sketch_view.sketch_section(root, ex, neighbor_ids, state.num_train):
    st.stop()
config = controls.influence_controls(state.num_train, on_gpu=da.worker_on_gpu(root))
if config is not None:
    job = da.enqueue_influence(root, ex.id, config)
    st.session_state[f"influence_job:{ex.id}"] = job.id
sketch_view.offer_build(root, state.num_train)  # no sketches yet: what building them costs, and a button

job = da.influence_job(root, ex.id, st.session_state.get(f"influence_job:{ex.id}"))
if job is not None and not job.finished:
    shell.job_progress(root, job.id)
    st.stop()
if job is not None and job.status != "done":
    render.job_status(job)  # failed or cancelled: say why, then fall back to what is stored
run_id = (
    da.run_for_job(root, job) if job is not None and job.status == "done" else da.latest_run_id(root, ex.id)
)
run = da.influence_run(root, run_id) if run_id is not None else None
if run is None:
    st.caption("No influence results are stored for this example yet: press “Compute influence”.")
    st.stop()
top = da.shown_top(job)
render.influence_lists(run, neighbor_ids, top)
render.export_buttons(run, neighbor_ids, top)
