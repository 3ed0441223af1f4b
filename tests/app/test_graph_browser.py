"""The Graphs page in a real browser (``streamlit run`` + Debian's headless Chromium through Playwright):
open a stored graph, wait for the WebGL plot, click a test node and land on that example's page; then
time the page on a graph of the issue's size (400 test nodes, >= 100,000 edges) and save a screenshot
(``test-artifacts/graph_browser.png``) and the render times (``test-artifacts/graph_browser.json``).

The large graph's influence values are random (a rendering load, not a result): it is built by the
same pure pipeline (layout, tables) and stored the same way as a computed graph.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fastif_core.apps.graph.build import build_graph, graph_arrays, summary
from fastif_core.apps.graph.config import GraphConfig
from fastif_core.apps.graph.selection import Selection
from fastif_core.config import InfluenceConfig
from fastif_core.store import Store
from fastif_core.store.graph_files import GraphArrays, load_graph_arrays, save_graph_arrays

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_browser import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_FLAGS,
    _free_port,
    _process,
    _wait_healthy,
    dashboard_command,
)

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
pytestmark = [pytest.mark.browser, pytest.mark.slow]


def store_render_load(root: Path, tests: int = 400, nodes: int = 2000, per_test: int = 250) -> int:
    """A stored graph of the issue's size with random influence values; returns its id."""
    rng = np.random.default_rng(0)
    values = np.full((tests, nodes), np.nan, dtype=np.float32)
    for j in range(tests):
        values[j, rng.choice(nodes, per_test, replace=False)] = rng.standard_t(3, per_test) * 1e-3
    test = Selection(
        [f"render-load:test{j}" for j in range(tests)],
        [j * 4 // tests for j in range(tests)],
        ["slice 1", "slice 2", "slice 3", "slice 4"],
    )
    cfg = GraphConfig(seed=0)
    arrays, _ = graph_arrays(values, test, cfg)
    ids = [f"render-load:train{i}" for i in arrays["train_pos"]]
    with Store.open(root) as store:
        model_id = store.find_model().id
        rel = save_graph_arrays(root, "render-load", GraphArrays(arrays, test.ids, ids))
        result = {
            **summary(values, test, arrays),
            "arrays": rel,
            "seconds": dict.fromkeys(("total", "influence", "layout"), 0.0),
        }
        return store.save_app_result("graph", {"render_load": "random values"}, result, model_id=model_id).id


def plot_point(page, xy: tuple[float, float]) -> tuple[float, float]:
    """Page pixel of data point ``xy`` in the first plotly chart (from plotly's own axis mapping)."""
    return tuple(
        page.evaluate(
            """([x, y]) => {
        const gd = document.querySelector('.js-plotly-plot'), r = gd.getBoundingClientRect();
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        return [r.left + xa._offset + xa.l2p(x), r.top + ya._offset + ya.l2p(y)];
    }""",
            list(xy),
        )
    )


def open_graph(page, url: str, graph_id: int) -> float:
    """Seconds from navigation until the graph's plot and its legend are drawn."""
    from playwright.sync_api import expect

    t0 = time.monotonic()
    page.goto(f"{url}/graphs?graph={graph_id}")
    chart = page.get_by_test_id("stPlotlyChart").first
    expect(chart.locator(".legend")).to_be_visible(timeout=120_000)
    expect(chart.locator("canvas").first).to_be_attached()
    return time.monotonic() - t0


@contextmanager
def dashboard_page(root: Path, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """``(url, page)``: the dashboard on workspace ``root`` (``streamlit run``) and a headless Chromium page."""
    from playwright.sync_api import sync_playwright

    env = {**os.environ, "FASTIF_WORKSPACE": str(root), "FASTIF_AUTOSTART_WORKER": "0"}
    port = _free_port()
    cmd = dashboard_command(port)
    with _process(cmd, tmp_path / "streamlit.log", env) as app, sync_playwright() as pw:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, app, tmp_path / "streamlit.log")
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield url, browser.new_page(viewport={"width": 1400, "height": 1100})
        finally:
            browser.close()


def test_graphs_page_click_through(tiny_workspace: Path, tmp_path: Path) -> None:
    """Open a computed graph, click a test node, land on that example's page."""
    _drive(tiny_workspace, tmp_path, render_load=False)


@pytest.mark.bench
def test_graphs_page_render_load(tiny_workspace: Path, tmp_path: Path) -> None:
    """A measurement, not run by default (``python -m pytest -m bench tests/app/test_graph_browser.py``): the
    page's render time on a 400-test-node, >= 100,000-edge graph, with a screenshot."""
    _drive(tiny_workspace, tmp_path, render_load=True)


@pytest.mark.bench
def test_graphs_page_render_load_at_400k_training_nodes(tiny_workspace: Path, tmp_path: Path) -> None:
    """The same measurement at issue 29's size: 400 test nodes with 1,000 edges each among 400,000
    training nodes (``test-artifacts/graph_browser_400k.json``; the layout's seconds included)."""
    _drive(
        tiny_workspace, tmp_path, render_load=True, nodes=400_000, per_test=1000, name="graph_browser_400k"
    )


def _drive(
    tiny_workspace: Path,
    tmp_path: Path,
    *,
    render_load: bool,
    nodes: int = 2000,
    per_test: int = 250,
    name: str = "graph_browser",
) -> None:
    from playwright.sync_api import expect

    small = build_graph(tiny_workspace, GraphConfig(per_slice=1, influence=InfluenceConfig(k=5, top=1)))
    t0 = time.monotonic()
    big = store_render_load(tiny_workspace, nodes=nodes, per_test=per_test) if render_load else None
    build_s = time.monotonic() - t0
    arrays = load_graph_arrays(tiny_workspace, small["arrays"])
    target, target_xy = arrays.test_ids[0], tuple(float(c) for c in arrays["test_xy"][0])
    with dashboard_page(tiny_workspace, tmp_path) as (url, page):
        small_s = open_graph(page, url, small["graph_id"])
        page.wait_for_timeout(500)
        x, y = plot_point(page, target_xy)
        page.mouse.move(x, y)
        page.mouse.click(x, y)
        expect(page).to_have_url(
            re.compile(r"/example\?example=" + re.escape(target).replace(":", "(:|%3A)")), timeout=60_000
        )
        expect(page.get_by_text("Premise", exact=True)).to_be_visible(timeout=60_000)
        if big is None:
            return
        big_s = open_graph(page, url, big)
        page.set_viewport_size({"width": 1400, "height": 2600})  # Streamlit scrolls inside its container
        page.wait_for_timeout(2000)
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(shot), full_page=True)
        shutil.copy(shot, tmp_path / shot.name)
    with Store.open(tiny_workspace) as store:
        edges = store.get_app_result("graph", big).result["num_edges"]
    assert edges >= 100_000
    with Store.open(tiny_workspace) as store:
        found = store.get_app_result("graph", big).result
    record = {
        "small_graph_s": round(small_s, 2),
        "render_load_graph_s": round(big_s, 2),
        "render_load_build_and_layout_s": round(build_s, 2),
        "render_load_edges": edges,
        "render_load_test_nodes": 400,
        "render_load_train_nodes": found["num_train_nodes"],
        "clicked": target,
        "screenshot": str(shot),
    }
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record))


@pytest.mark.bench
def test_graphs_page_on_a_real_workspace(tmp_path: Path) -> None:
    """A measurement on your own workspace, not run by default: ``FASTIF_GRAPH_WORKSPACE=workspaces/mnli8k
    [FASTIF_GRAPH_ID=N] python -m pytest -m bench tests/app/test_graph_browser.py -k real_workspace`` opens
    its newest stored graph (or graph N) on the Graphs page, times the render and saves
    ``test-artifacts/graph_<workspace>_<id>.png`` and ``.json``. The workspace is only read."""
    from playwright.sync_api import expect

    root = os.environ.get("FASTIF_GRAPH_WORKSPACE")
    if not root:
        pytest.skip("set FASTIF_GRAPH_WORKSPACE to a workspace with a stored graph")
    root_path = Path(root).resolve()
    with Store.open(root_path) as store:
        wanted = os.environ.get("FASTIF_GRAPH_ID")
        graphs = [g for g in store.list_app_results("graph") if wanted is None or g.id == int(wanted)]
        assert graphs, f"no stored graph {wanted or ''} in {root_path}"
        info = max(graphs, key=lambda g: g.id)
    with dashboard_page(root_path, tmp_path) as (url, page):
        seconds = open_graph(page, url, info.id)  # the server's first page: its caches are cold
        page.goto(f"{url}/browse")
        expect(page.get_by_test_id("stDataFrame").first).to_be_visible(timeout=120_000)
        again = open_graph(page, url, info.id)  # as a user meets it later
        page.set_viewport_size({"width": 1400, "height": 2600})
        page.wait_for_timeout(2000)
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / f"graph_{root_path.name}_{info.id}.png"
        page.screenshot(path=str(shot), full_page=True)
    record = {
        "workspace": str(root_path),
        "graph_id": info.id,
        "render_s": round(seconds, 2),
        "render_again_s": round(again, 2),
        "num_edges": info.result["num_edges"],
        "num_test_nodes": info.result["num_test_nodes"],
        "num_train_nodes": info.result["num_train_nodes"],
        "screenshot": str(shot),
    }
    shot.with_suffix(".json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record))
