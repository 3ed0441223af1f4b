"""The dashboard's pages through ``streamlit.testing.v1.AppTest`` on a real tiny workspace.

No mocks of fastif_core: the workspace is built with the real pipeline, jobs go through the real
queue, and the assertions compare what the page shows with what the store holds.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from fastif_core.config import InfluenceConfig, STestConfig, to_dict
from fastif_core.queries.influence import influence_query
from fastif_core.store import ExampleFilter, InfluenceRunInfo, Store

REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "app" / "dashboard.py")
EXAMPLE_PAGE = "views/example.py"
JOBS_PAGE = "views/jobs.py"
TIMEOUT = 60

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))
from factories import make_tiny_workspace  # noqa: E402

from app.formatting import export_csv, export_json  # noqa: E402


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny prepared workspace for the whole session (built by the real prepare pipeline)."""
    return make_tiny_workspace(tmp_path_factory.mktemp("app_ws") / "ws")


@pytest.fixture
def app_env(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """The app pointed at the tiny workspace, with no auto-started worker; fresh query caches."""
    monkeypatch.setenv("FASTIF_WORKSPACE", str(workspace))
    monkeypatch.setenv("FASTIF_AUTOSTART_WORKER", "0")
    st.cache_data.clear()
    store = Store.open(workspace)
    yield store
    store.close()


def _app(**query: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in query.items():
        at.query_params[key] = value
    return at.run()


def _ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += [e.value for e in (*at.info, *at.error, *at.warning, *at.success)]
    return "\n".join(str(p) for p in parts)


def test_browse_shows_every_example_with_counts_and_accuracy(app_env: Store) -> None:
    at = _ok(_app())
    summary = app_env.summarize_examples()
    metrics = _metrics(at)
    assert metrics["Matching examples"] == f"{summary.count:,}"
    assert metrics["Correct"] == f"{summary.correct:,}"
    assert metrics["Accuracy"] == f"{summary.accuracy:.1%}"
    table = at.dataframe[0].value
    assert len(table) == summary.count and set(table["id"]) == {
        r.id for r in app_env.query_examples(limit=None)
    }


def test_filters_narrow_the_table(app_env: Store) -> None:
    at = _ok(_app())
    split = "challenge"
    _ok(at.multiselect(key="f_split").set_value([split]).run())
    table = at.dataframe[0].value
    expected = app_env.query_examples(ExampleFilter(split=split), limit=None)
    assert 0 < len(table) < app_env.summarize_examples().count
    assert set(table["id"]) == {r.id for r in expected} and set(table["split"]) == {split}
    _ok(at.segmented_control(key="f_correct").set_value("Incorrect").run())
    table = at.dataframe[0].value
    wrong = app_env.summarize_examples(ExampleFilter(split=split, correct=False))
    assert len(table) == wrong.count and not table["correct"].any()
    assert _metrics(at)["Accuracy"] == "0.0%"
    word = expected[0].premise.split()[1]
    _ok(at.segmented_control(key="f_correct").set_value("All").run())
    _ok(at.text_input(key="f_search").set_value(word).run())
    table = at.dataframe[0].value
    assert len(table) == app_env.summarize_examples(ExampleFilter(split=split, search=word)).count
    assert all(
        word.lower() in (p + " " + h).lower()
        for p, h in zip(table["premise"], table["hypothesis"], strict=True)
    )


def test_browse_pages_through_the_matching_examples(app_env: Store) -> None:
    """Page N shows rows (N-1)·size … N·size of the store's id order; a new filter goes back to page 1."""
    at = _ok(_app())
    _ok(at.selectbox(key="browse_rows").set_value(50).run())
    count = app_env.summarize_examples().count
    pages = -(-count // 50)
    assert pages >= 2, "the tiny workspace needs more than one page of 50"
    box = at.number_input(key="browse_page")
    assert box.label == f"Page (of {pages:,})" and box.value == 1
    for page in (1, 2, pages):
        _ok(at.number_input(key="browse_page").set_value(page).run())
        expected = app_env.query_examples(limit=50, offset=(page - 1) * 50)
        assert list(at.dataframe[0].value["id"]) == [r.id for r in expected]
        first = (page - 1) * 50
        assert f"Rows {first + 1:,}–{first + len(expected):,} of {count:,}" in _texts(at)
    _ok(at.multiselect(key="f_split").set_value(["challenge"]).run())
    challenge = app_env.summarize_examples(ExampleFilter(split="challenge")).count
    if challenge > 50:
        assert at.number_input(key="browse_page").value == 1
    else:  # one page: no page number, and the first page shown
        assert not [w for w in at.number_input if w.key == "browse_page"]
    expected = app_env.query_examples(ExampleFilter(split="challenge"), limit=50)
    assert list(at.dataframe[0].value["id"]) == [r.id for r in expected]


def test_accuracy_by_slice_is_computed_when_asked(app_env: Store) -> None:
    at = _ok(_app())
    assert len(at.dataframe) == 1  # the examples table only: the per-slice counts wait for the toggle
    _ok(at.toggle(key="by_slice").set_value(True).run())
    table = at.dataframe[1].value
    groups = app_env.summarize_by("split")
    assert list(table["examples"]) == [g.count for g in groups] and len(groups) >= 2


def test_deep_link_opens_the_example(app_env: Store) -> None:
    ex = app_env.query_examples(ExampleFilter(split="challenge"), limit=1)[0]
    at = _ok(_app(example=ex.id))
    text = _texts(at)
    assert ex.id in text and ex.premise.split()[0] in text
    assert f"Gold label {ex.label}" in text.replace(":orange-badge[", "").replace(
        ":green-badge[", ""
    ).replace("]", "")
    assert len(at.get("vega_lite_chart")) == 1  # class probabilities
    neighbors = at.dataframe[0].value
    model_id = json.loads((Path(os.environ["FASTIF_WORKSPACE"]) / "workspace.json").read_text())["model_id"]
    assert list(neighbors["id"]) == [n.train_id for n in app_env.get_neighbors(model_id, ex.id)]
    # the exact click, then (no sketch index in this workspace) the offer to build one
    assert [b.label for b in at.button] == ["Compute influence", "Build sketches"]


def test_unknown_example_in_the_url_is_explained(app_env: Store) -> None:
    at = _ok(_app(example="no-such-example"))
    assert any("no example with id `no-such-example`" in e.value for e in at.error)


def test_compute_influence_twice_creates_one_job(app_env: Store) -> None:
    ex = app_env.query_examples(ExampleFilter(split="challenge"), limit=1, offset=3)[0]
    at = _ok(_app(example=ex.id))
    before = [j for j in app_env.list_jobs(kind="influence") if j.params["example_id"] == ex.id]
    _ok(at.button[0].click().run())
    _ok(at.button[0].click().run())
    after = [j for j in app_env.list_jobs(kind="influence") if j.params["example_id"] == ex.id]
    assert len(before) == 0 and len(after) == 1
    job = after[0]
    assert job.status == "queued" and job.params["config"]["s_test"] == to_dict(STestConfig.default())
    assert f"Job **#{job.id}**" in _texts(at)
    assert any("No background worker is alive" in w.value for w in at.warning)
    app_env.cancel_job(job.id)


def _depth_input(at: AppTest) -> int:
    return next(n.value for n in at.number_input if n.label == "J depth")


def test_form_prefills_the_chosen_preset_and_warns_about_paper_on_cpu(app_env: Store) -> None:
    ex = app_env.query_examples(ExampleFilter(split="challenge"), limit=1, offset=5)[0]
    at = _ok(_app(example=ex.id))
    assert _depth_input(at) == STestConfig.default().depth  # the engine's default, as the CLI
    assert at.selectbox[0].value == "default"
    at = _ok(at.selectbox[0].select("paper").run())
    assert _depth_input(at) == STestConfig.fast().depth == 1000
    assert "the paper's J=1000 takes minutes per click" in _texts(at)
    # a live worker that registered a CUDA device: no CPU warning
    app_env.worker_heartbeat("gpu-box-worker", host="gpu-box", pid=1, devices=["cuda:0", "cuda:1"])
    try:
        st.cache_data.clear()
        at = _ok(_app(example=ex.id))
        at = _ok(at.selectbox[0].select("paper").run())
        assert "takes minutes per click" not in _texts(at)
    finally:
        app_env.worker_heartbeat("gpu-box-worker", status="stopped")


@pytest.fixture(scope="session")
def stored_run(workspace: Path) -> InfluenceRunInfo:
    """One influence run computed by the real engine (as the worker runs it) and stored."""
    with Store.open(workspace) as store:
        ex = store.query_examples(ExampleFilter(split="challenge"), limit=1, offset=1)[0]
        answer = influence_query(
            workspace, ex.id, InfluenceConfig(s_test=STestConfig.fast(depth=10), k=12, top=3)
        )
        return store.get_influence_run(answer["run_id"])


def test_stored_results_show_at_once_with_links_and_exports(
    app_env: Store, stored_run: InfluenceRunInfo
) -> None:
    at = _ok(_app(example=stored_run.example_id))
    text = _texts(at)
    assert "Most helpful" in text and "Most harmful" in text
    shown = stored_run.helpful(10) + stored_run.harmful(10)
    assert shown and all(f"{s.value:+.3e}" in text for s in shown)
    links = {link.proto.query_string for link in at.get("page_link")}
    assert {urlencode({"example": s.train_id}) for s in shown} <= links
    assert [d.proto.label for d in at.get("download_button")] == ["Download CSV", "Download JSON"]


def test_exports_carry_the_scores_and_the_config(stored_run: InfluenceRunInfo) -> None:
    neighbor_ids = {stored_run.scores[0].train_id}
    rows = list(
        csv.DictReader(
            line for line in export_csv(stored_run, neighbor_ids, 2).splitlines() if not line.startswith("#")
        )
    )
    expected = stored_run.helpful(2) + stored_run.harmful(2)
    assert [r["train_id"] for r in rows] == [s.train_id for s in expected]
    assert [float(r["influence"]) for r in rows] == pytest.approx([s.value for s in expected])
    assert [r["nearest_neighbor"] == "True" for r in rows] == [s.train_id in neighbor_ids for s in expected]
    config_line = export_csv(stored_run, neighbor_ids, 2).splitlines()[1]
    assert json.loads(config_line.removeprefix("# config: ")) == stored_run.config
    payload = json.loads(export_json(stored_run, neighbor_ids, 2))
    assert payload["config"] == stored_run.config and payload["num_candidates"] == stored_run.num_candidates
    assert [r["influence"] for r in payload["helpful"]] == pytest.approx(
        [s.value for s in stored_run.helpful(2)]
    )
    assert all(r["influence"] > 0 for r in payload["harmful"]) and all(
        r["influence"] < 0 for r in payload["helpful"]
    )


def test_failed_job_is_explained_on_its_example_and_on_the_jobs_page(app_env: Store) -> None:
    ex = app_env.query_examples(limit=1, offset=2)[0]
    failing = app_env.enqueue_job("influence", {"example_id": ex.id, "config": {"k": 0}, "model_id": None})
    claimed = app_env.claim_job("test-owner")
    assert claimed is not None and claimed.id == failing.id
    app_env.fail_job(failing.id, "test-owner", "ConfigError: k=0 is invalid: allowed an integer >= 1")
    at = _ok(_app(example=ex.id))
    assert any(f"Job #{failing.id} failed" in e.value and "k=0 is invalid" in e.value for e in at.error)
    at.switch_page(JOBS_PAGE)
    _ok(at.run())
    assert failing.id in set(at.dataframe[0].value["id"])
    assert any("k=0 is invalid" in e.value for e in at.error)


def test_jobs_page_cancels_a_queued_job(app_env: Store) -> None:
    ex = app_env.query_examples(limit=1, offset=4)[0]
    queued = app_env.enqueue_job("influence", {"example_id": ex.id, "config": {"k": 3}, "model_id": None})
    at = _app()
    at.switch_page(JOBS_PAGE)
    _ok(at.run())
    row = at.dataframe[0].value.set_index("id").loc[queued.id]
    assert row["status"] == "queued" and row["subject"] == f"example {ex.id}"
    _ok(at.selectbox[0].set_value(queued.id).run())
    _ok(at.button(key="FormSubmitter:cancel_form-Cancel job").click().run())
    assert app_env.get_job(queued.id).status == "cancelled"


def test_unprepared_workspace_offers_to_prepare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "fresh"
    monkeypatch.setenv("FASTIF_WORKSPACE", str(root))
    monkeypatch.setenv("FASTIF_AUTOSTART_WORKER", "0")
    st.cache_data.clear()
    at = _ok(_app())
    assert any("is not prepared yet" in i.value for i in at.info)
    assert "fastif prepare --workspace" in at.code[0].value
    _ok(at.button[0].click().run())
    _ok(at.run())
    with Store.open(root) as store:
        jobs = store.list_jobs(kind="prepare")
    assert len(jobs) == 1 and jobs[0].params["train"] == "demo"
    assert f"Job **#{jobs[0].id}**" in _texts(at)


def test_app_starts_a_worker_when_none_is_alive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "autostart"
    monkeypatch.setenv("FASTIF_WORKSPACE", str(root))
    monkeypatch.setenv("FASTIF_AUTOSTART_WORKER", "1")
    monkeypatch.setenv("FASTIF_WORKER_DEVICES", "cpu:1")
    st.cache_data.clear()
    at = _ok(_app())
    assert "worker started" in _texts(at)
    assert any("started one in the background" in t.value for t in at.toast)
    with Store.open(root) as store:
        pid = _wait_for_worker_pid(store)
    try:
        assert "worker running" in _texts(_ok(_app()))
    finally:
        os.kill(pid, signal.SIGTERM)


def _wait_for_worker_pid(store: Store, limit_s: float = 90.0) -> int:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        alive = store.list_workers(alive_within_s=30)
        if alive:
            return alive[0].pid
        time.sleep(0.5)
    raise AssertionError(f"the auto-started worker never registered (see {store.url} and worker.log)")


def test_app_process_never_imports_torch(workspace: Path) -> None:
    code = (
        "import sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"at = AppTest.from_file({APP!r}, default_timeout={TIMEOUT}).run()\n"
        "assert not at.exception, at.exception\n"
        "print(sorted(m for m in ('torch', 'transformers', 'faiss') if m in sys.modules))\n"
    )
    env = {**os.environ, "FASTIF_WORKSPACE": str(workspace), "FASTIF_AUTOSTART_WORKER": "0"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
