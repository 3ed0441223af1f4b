"""The example page's "whole training set" click (gradient sketches, issue 27): the sketch ranking over all N
appears as soon as the worker has stored it, then the exact FastIF re-rank of its top candidates and the kNN
set replaces it, with how far the two agreed. Reads the store and enqueues ``sketch_click`` jobs only."""

from __future__ import annotations

import streamlit as st

from app import data_access as da
from app import render, shell
from fastif_core.config import InfluenceConfig, SketchConfig, SketchQueryConfig
from fastif_core.store.records import ExampleRow

RERANK = 100  # the sketch's top helpful and top harmful re-ranked exactly (plus the kNN set)


def sketch_query_config(index_meta: dict) -> SketchQueryConfig:
    """The query of a stored index (its settings name it)."""
    s = index_meta["key"]["settings"]
    fields = {k: s[k] for k in ("dim", "projection", "small", "seed", "rows", "dtype")}
    return SketchQueryConfig(sketch=SketchConfig(**fields))


def sketch_section(root: str, ex: ExampleRow, neighbor_ids: set[str], num_train: int) -> bool:
    """The button and the live lists; True when this section showed a result or a running job (the page
    then shows nothing else below)."""
    indexes = da.sketch_indexes(root)
    if not indexes:
        return False
    meta = indexes[0]
    key = f"sketch_click_job:{ex.id}"
    st.caption(
        f"Sketches of all {num_train:,} training examples are stored (d = {meta['dim']:,}): one click "
        f"ranks the whole training set, then re-ranks its top {RERANK} and the k nearest exactly."
    )
    if st.button(
        "Whole training set: sketch, then exact re-rank", icon=":material/bolt:", key="sketch_click"
    ):
        cfg = InfluenceConfig(k=min(InfluenceConfig().k or 1, num_train))
        job = da.enqueue_sketch_click(root, ex.id, cfg, sketch_query_config(meta), RERANK)
        st.session_state[key] = job.id
    job_id = st.session_state.get(key)
    if job_id is None:
        return False
    job = da.job(root, job_id)
    if job is None:
        return False
    if not job.finished:
        _live(root, job.id, ex.id, neighbor_ids)
        return True
    if job.status != "done":
        render.job_status(job)
        return False
    result = job.result or {}
    run = da.influence_run(root, int(result["exact_run_id"]))
    a = result.get("agreement", {})
    st.success(
        f"Exact re-rank of {result.get('candidates')} candidates (the sketch's top {RERANK} of each sign "
        f"and the {result.get('knn')} nearest) · agreement with the sketch: Pearson {a.get('pearson', 0):.3f}, "
        f"top-10 overlap helpful {a.get('top10_helpful', 0):.0%} / harmful {a.get('top10_harmful', 0):.0%}"
    )
    render.influence_lists(run, neighbor_ids, 10)
    return True


@st.fragment(run_every=shell.POLL_SECONDS)
def _live(root: str, job_id: int, example_id: str, neighbor_ids: set[str]) -> None:
    """While the job runs: its progress, and the sketch list once it is stored; the page reruns when done."""
    job = da.job(root, job_id)
    run_id = da.latest_sketch_run_id(root, example_id)
    if run_id is not None:
        st.info(
            "Sketch ranking over the whole training set; the exact re-rank is running and will replace it."
        )
        render.influence_lists(da.influence_run(root, run_id), neighbor_ids, 10)
    render.job_status(job)
    if job.finished:
        st.cache_data.clear()
        st.rerun(scope="app")


def offer_build(root: str, num_train: int) -> None:
    """No sketch index yet: what it costs and a button that queues the ``sketch`` job (progress live);
    nothing once an index exists (the click of :func:`sketch_section` takes over)."""
    if da.sketch_indexes(root):
        return
    offer = da.sketch_build_offer(root)
    job = offer["job"]
    if job is not None and not job.finished:
        with st.container(border=True):
            st.caption(
                "Building gradient sketches of the training set (resumable; the click uses them once done)."
            )
            shell.job_progress(root, job.id)
        return
    partial, cfg = offer["partial"], offer["config"]
    cost = f"d = {cfg.dim:,} target, {cfg.projection} factors"
    if partial is not None:
        cost = f"d = {partial['dim']:,}, {partial['blocks_done']}/{partial['blocks_total']} blocks built"
        if partial["estimate_seconds"]:
            cost += f", about {partial['estimate_seconds'] / 60:.0f} min for all (timed by the prepare)"
    with st.expander(
        f"Rank all {num_train:,} training examples at once: build gradient sketches", expanded=False
    ):
        st.caption(
            f"One sketch per training example ({cost}), computed once per model by the worker; afterwards "
            "a click ranks the whole training set in about a second and re-ranks its top exactly. "
            "The same as `fastif sketch --workspace W --submit`."
        )
        if job is not None and job.status != "done":
            render.job_status(job)
        if st.button("Build sketches", icon=":material/memory:", key="sketch_build"):
            da.enqueue_sketch_build(root)
            st.rerun()
