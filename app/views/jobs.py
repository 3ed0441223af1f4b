"""Jobs: the queue and its history (status, progress, duration, device, error); cancel a job."""

from __future__ import annotations

import streamlit as st

from app import controls, render
from app import data_access as da
from app import formatting as fmt
from fastif_core import jobs as job_kinds

root = da.workspace_root()
st.title("Jobs")
statuses, kinds = controls.jobs_controls([k.name for k in job_kinds.kinds()])


@st.fragment(run_every=2.0)
def queue() -> None:
    """The jobs table, refreshed every two seconds."""
    listed = [j for j in da.list_jobs(root, statuses) if kinds is None or j.kind in kinds]
    alive = da.workers(root, alive_within_s=30)
    st.caption(
        f"{len(alive)} worker(s) alive · "
        + " · ".join(f"{w.id} on {', '.join(w.devices) or '—'}" for w in alive)
    )
    if not listed:
        st.info("No jobs yet. Open an example and press “Compute influence” to queue one.")
        return
    render.jobs_table(fmt.jobs_frame(listed))
    for j in listed:
        if j.status == "failed":
            render.job_error(j)


queue()
cancellable = da.list_jobs(root, ["queued", "running"])
if cancellable:
    with st.form("cancel_form"):
        chosen = st.selectbox(
            "Cancel a queued or running job",
            [j.id for j in cancellable],
            format_func=lambda i: next(
                f"#{j.id} {j.kind}: {fmt.job_subject(j)} ({j.status})" for j in cancellable if j.id == i
            ),
        )
        if st.form_submit_button("Cancel job", icon=":material/cancel:"):
            cancelled = da.cancel_job(root, int(chosen))
            render.job_status(cancelled)
            st.toast(
                f"Job #{cancelled.id}: cancellation requested."
                if cancelled.status == "running"
                else f"Job #{cancelled.id} cancelled."
            )
