"""What the Explain page reads and the one write it makes (queueing a ``simulate`` job); no torch here."""

from __future__ import annotations

import streamlit as st

from app import data_access as da
from fastif_core import jobs
from fastif_core.apps.simulate.config import JOB_KIND, SimulateConfig, SimulateParams
from fastif_core.store import AppResultInfo, JobInfo

APP, KIND = "simulation", JOB_KIND  # the store's table and the job kind (fastif_core.apps.simulate)


@st.cache_data(ttl=5, show_spinner=False)
def simulations(root: str, model_id: int | None) -> list[AppResultInfo]:
    """The studies stored for the workspace's model, newest first."""
    return da.store(root).list_app_results(APP, model_id=model_id, kind=KIND) if model_id is not None else []


def simulation(root: str, simulation_id: int) -> AppResultInfo | None:
    return da.store(root).get_app_result(APP, simulation_id)


def enqueue_simulate(root: str, config: SimulateConfig) -> JobInfo:
    """Queue a study of the workspace's model (an equal queued, running or done job is reused)."""
    params = SimulateParams(config=config, model_id=da.workspace_state(root).model_id)
    return jobs.enqueue(da.store(root), KIND, params)
