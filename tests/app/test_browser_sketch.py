"""The whole-training-set click in a real browser (issue 27): a tiny prepared workspace with its sketch index
built, ``streamlit run`` and a background worker, Debian's headless Chromium through Playwright. Open an
example, press the sketch button: the sketch list over all N is stored first, then the exact re-rank
replaces it with the agreement line; a screenshot is saved under ``test-artifacts/``."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from factories import make_tiny_workspace
from test_browser import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    _free_port,
    _process,
    _save_screenshot,
    _wait_healthy,
    dashboard_command,
    worker_command,
)

from fastif_core.store import Store

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_sketch_click_shows_the_exact_rerank_with_agreement(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    from fastif_core.config import SketchConfig
    from fastif_core.workspace.layout import LoadedWorkspace
    from fastif_core.workspace.sketches import build_sketches

    root = make_tiny_workspace(tmp_path / "ws")
    build_sketches(LoadedWorkspace.load(root, search=False), SketchConfig(dim=300))
    with Store.open(root) as store:
        example = store.query_examples(split="challenge", limit=1)[0]
    env = {
        **os.environ,
        "FASTIF_WORKSPACE": str(root),
        "FASTIF_AUTOSTART_WORKER": "0",
        "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1",
        "OMP_NUM_THREADS": "1",
    }
    port = _free_port()
    worker, app = worker_command(root), dashboard_command(port)
    with (
        _process(worker, tmp_path / "worker.log", env),
        _process(app, tmp_path / "streamlit.log", env) as proc,
    ):
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, proc, tmp_path / "streamlit.log")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            try:
                page.goto(f"{url}/example?example={example.id}")
                expect(page.get_by_text("Premise", exact=True)).to_be_visible(timeout=60_000)
                page.get_by_role("button", name=re.compile("Whole training set")).click()
                expect(page.get_by_text(re.compile("Exact re-rank of"))).to_be_visible(timeout=300_000)
                expect(page.get_by_text(re.compile("agreement with the sketch: Pearson"))).to_be_visible()
                expect(page.get_by_text("Most helpful")).to_be_visible()
                _save_screenshot(page, tmp_path, "browser_sketch_click.png")
            except Exception:
                _save_screenshot(page, tmp_path, "browser_sketch_failure.png")
                raise
            finally:
                browser.close()
    with Store.open(root) as store:
        runs = store.list_influence_runs(example_id=example.id)
    methods = {r.config.get("method"): r for r in runs}
    assert set(methods) == {"sketch", "rerank"}
    assert (
        methods["sketch"].num_candidates == 60 and methods["sketch"].id < methods["rerank"].id
    )  # sketch first
