"""The Browse page's sort by self-influence (gradient sketches, issue 27) through ``AppTest`` on a real tiny
workspace whose sketch index and self-influences were built by ``fastif sketch --self-influence``."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import streamlit as st
from streamlit.testing.v1 import AppTest

from fastif_core.store import Store

REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "app" / "dashboard.py")


def test_browse_sorts_training_examples_by_self_influence(tiny_workspace, monkeypatch):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "fastif_core",
        "sketch",
        "-w",
        str(tiny_workspace),
        "--dim",
        "300",
        "--self-influence",
        "--json",
    ]
    out = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)
    values = np.load(next(Path(out["path"]).glob("self_influence-*.npy")))
    with Store.open(tiny_workspace) as store:
        train_ids = store.train_ids(1)
    assert len(values) == len(train_ids) == out["num_train"] and (values > 0).all()
    monkeypatch.setenv("FASTIF_WORKSPACE", str(tiny_workspace))
    monkeypatch.setenv("FASTIF_AUTOSTART_WORKER", "0")
    st.cache_data.clear()
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    before = at.dataframe[0].value
    at.toggle(key="by_self_influence").set_value(True).run()
    assert not at.exception
    table = at.dataframe[0].value
    order = np.argsort(-values, kind="stable")
    assert list(table["id"]) == [train_ids[i] for i in order] != list(before["id"])[: len(table)]
    assert np.all(np.diff(table["self_influence"].to_numpy()) <= 0)  # largest first


def test_example_page_offers_to_build_sketches_and_queues_the_default_job(tiny_workspace, monkeypatch):
    """No complete index: the example page says what a build costs (an unfinished index's blocks and the
    prepare's estimate) and its button queues the default ``sketch`` job, whose progress then shows."""
    from fastif_core.config import SketchConfig
    from fastif_core.workspace.layout import LoadedWorkspace
    from fastif_core.workspace.sketches import build_within_budget

    deferred = build_within_budget(  # what `fastif prepare` leaves when the build is over its budget
        LoadedWorkspace.load(tiny_workspace, search=False), SketchConfig(block=16), 0.0
    )
    assert deferred["status"] == "deferred"
    monkeypatch.setenv("FASTIF_WORKSPACE", str(tiny_workspace))
    monkeypatch.setenv("FASTIF_AUTOSTART_WORKER", "0")
    st.cache_data.clear()
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["example"] = "demo-hans:challenge:ex0"
    at.switch_page("views/example.py").run()
    assert not at.exception, [e.value for e in at.exception]
    blocks = f"{deferred['blocks']['done']}/{deferred['blocks']['total']} blocks built"
    offer = [c.value for c in at.caption if "gradient" in c.value or "sketch" in c.value]
    assert any(blocks in c and "timed by the prepare" in c for c in offer), offer
    at.button(key="sketch_build").click().run()
    assert not at.exception, [e.value for e in at.exception]
    with Store.open(tiny_workspace) as store:
        (job,) = store.list_jobs(kind="sketch")
    assert job.status == "queued" and job.params["config"] == dataclasses.asdict(SketchConfig())
    assert any("Building gradient sketches" in c.value for c in at.caption)
