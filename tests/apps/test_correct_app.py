"""The dashboard's Correct page (streamlit AppTest) on a tiny workspace with one stored run: the curves,
the before/after table, the version list; launching queues one ``correct`` job for the served model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from fastif_core.apps.correct.config import CorrectConfig
from fastif_core.apps.correct.job import run_correction
from fastif_core.apps.correct.summary import merge_runs
from fastif_core.config import STestConfig
from fastif_core.store import Store

APP = str(Path(__file__).resolve().parents[2] / "app" / "dashboard.py")
RUN = CorrectConfig(
    anchors=2,
    iterations=2,
    seeds=2,
    top=3,
    lr=0.05,
    methods=("random", "anchors"),
    max_eval=6,
    s_test=STestConfig.default(depth=2, batch_size=8),
)


@pytest.fixture
def page(tiny_workspace: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    out = run_correction(tiny_workspace, RUN)
    monkeypatch.setenv("FASTIF_WORKSPACE", str(tiny_workspace))
    monkeypatch.setenv("FASTIF_AUTOSTART_WORKER", "0")
    st.cache_data.clear()
    return tiny_workspace, out


def _correct_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("views/correct.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_correct_page_draws_the_stored_run_and_queues_a_launch(page) -> None:
    ws, out = page
    at = _correct_page()
    texts = "\n".join(str(m.value) for m in at.markdown)
    assert f"**Run #{out['run_id']}**" in texts and out["target"] in texts
    frames = [d.value for d in at.dataframe]
    table = next(f for f in frames if "change" in getattr(f, "columns", []))
    assert set(table["method"]) == {"random", "anchors"} and set(table["part"]) == set(out["before"])
    row = table[(table.method == "random") & (table.part == out["target"])].iloc[0]
    summary = out["methods"]["random"]["summary"][out["target"]]["accuracy"]
    assert row["after"] == pytest.approx(summary["mean"][-1]) and row["min"] == pytest.approx(
        summary["min"][-1]
    )
    assert any(list(getattr(f, "columns", []))[:2] == ["id", "name"] for f in frames)  # the version list
    at.number_input(key="correct_anchors").set_value(2)
    at.button[0].click()  # "Run correction" (the first form's submit button)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    with Store.open(ws) as store:
        queued = store.list_jobs(status="queued")
    assert [j.kind for j in queued] == ["correct"] and queued[0].params["model_id"] == 1
    assert queued[0].params["anchors"] == 2


def test_merged_view_joins_a_seed_run_alone_to_the_stored_two_seed_run(page) -> None:
    ws, out = page
    third = run_correction(ws, replace(RUN, seed=2, seeds=1, split_seed=0))
    (merged,) = merge_runs([(out["run_id"], out), (third["run_id"], third)])
    at = _correct_page()
    at.toggle(key="correct_merge").set_value(True)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    texts = "\n".join(str(m.value) for m in at.markdown)
    assert f"**Runs #{out['run_id']}, #{third['run_id']}** · seeds [0, 1, 2]" in texts
    table = next(d.value for d in at.dataframe if "change" in getattr(d.value, "columns", []))
    row = table[(table.method == "anchors") & (table.part == out["target"])].iloc[0]
    acc = merged["methods"]["anchors"]["summary"][out["target"]]["accuracy"]
    assert (row["after"], row["min"], row["max"]) == pytest.approx(
        (acc["mean"][-1], acc["min"][-1], acc["max"][-1])
    )
    assert acc["mean"][-1] == pytest.approx(
        sum(
            s["curve"][-1][out["target"]]["accuracy"]
            for s in [*out["methods"]["anchors"]["seeds"], *third["methods"]["anchors"]["seeds"]]
        )
        / 3
    )


def test_page_imports_a_run_made_in_another_workspace_and_merges_it(
    page, tiny_workspace_template, tmp_path
) -> None:
    import json
    import shutil

    ws, out = page
    other = shutil.copytree(tiny_workspace_template, tmp_path / "other")  # the same prepare elsewhere
    seed2 = run_correction(other, replace(RUN, seed=2, seeds=1, split_seed=0))
    exported = tmp_path / "seed2.json"
    exported.write_text(json.dumps(seed2))
    at = _correct_page()
    at.text_area(key="correct_import_paths").set_value(f"{tmp_path / 'missing.json'}\n{exported}")
    at.button(key="correct_import").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    (error,) = at.error
    assert "missing.json: cannot read the run" in error.value and not at.success
    at.text_area(key="correct_import_paths").set_value(str(exported))
    at.button(key="correct_import").click()
    at.run()
    assert [s.value for s in at.success] == [f"{exported}: imported as run #{out['run_id'] + 1}"]
    at.toggle(key="correct_merge").set_value(True)
    at.run()
    texts = "\n".join(str(m.value) for m in at.markdown)
    assert f"**Runs #{out['run_id']}, #{out['run_id'] + 1}** · seeds [0, 1, 2]" in texts
