"""The main journey in a real browser: ``streamlit run`` + a background worker on a tiny prepared
workspace, driven by Debian's headless Chromium through Playwright (which never downloads a browser).

Open an example, press "Compute influence", wait for the ranked lists, save a screenshot (under the
test's tmp_path and ``test-artifacts/``) and the click-to-list time (``test-artifacts/browser_journey.json``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fastif_core.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parent))
from factories import make_tiny_workspace  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RESULT_TIMEOUT_S = 300
ROW_PX = 35  # st.dataframe's header and row height
DEPTH = 100  # LiSSA depth J typed into the form (the CPU pre-fill; the journey, not the math, is tested)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _process(cmd: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """A child process in its own process group, stopped (SIGTERM, then SIGKILL) on exit."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, limit_s: float = 90.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"streamlit exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(
        f"streamlit did not answer at {url} within {limit_s:.0f} s:\n{log.read_text()[-3000:]}"
    )


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(URL, workspace): streamlit and a worker serving a freshly prepared tiny workspace."""
    root = make_tiny_workspace(tmp_path / "ws")
    env = {
        **os.environ,
        "FASTIF_WORKSPACE": str(root),
        "FASTIF_AUTOSTART_WORKER": "0",
        "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1",
    }
    port = _free_port()
    worker_cmd, app_cmd = worker_command(root), dashboard_command(port)
    with (
        _process(worker_cmd, tmp_path / "worker.log", env),
        _process(app_cmd, tmp_path / "streamlit.log", env) as app,
    ):
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, app, tmp_path / "streamlit.log")
        yield url, root


def worker_command(root: Path) -> list[str]:
    """A real ``fastif worker`` on one CPU process, polling every half second."""
    cli = [sys.executable, "-m", "fastif_core", "worker", "--workspace", str(root)]
    return [*cli, "--devices", "cpu:1", "--poll", "0.5"]


def dashboard_command(port: int) -> list[str]:
    """``streamlit run app/dashboard.py`` headless on ``port``."""
    args = f"run app/dashboard.py --server.port {port} --server.headless true".split()
    return [sys.executable, "-m", "streamlit", *args]


def _save_screenshot(page, tmp_path: Path, name: str) -> Path:
    """Streamlit scrolls inside its own container, so a tall viewport is what shows the whole page."""
    shot = tmp_path / name
    page.set_viewport_size({"width": 1400, "height": 3200})
    page.wait_for_timeout(500)  # let the layout settle at the new size
    page.screenshot(path=str(shot), full_page=True)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / name)
    return shot


def test_compute_influence_journey(dashboard: tuple[str, Path], tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, root = dashboard
    with Store.open(root) as store:
        example = store.query_examples(limit=1)[0]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(url)  # Browse; the table is sorted by id, so its first row is `example`
            grid = page.get_by_test_id("stDataFrame").first
            expect(grid).to_be_visible(timeout=60_000)
            box = grid.bounding_box()
            page.mouse.click(box["x"] + 15, box["y"] + 1.5 * ROW_PX)  # the first row's selection cell
            expect(page.get_by_text("Premise", exact=True)).to_be_visible(timeout=60_000)
            expect(page).to_have_url(re.compile(r"/example\?example="))
            expect(page.get_by_text(example.hypothesis)).to_be_visible()
            page.get_by_role("spinbutton", name="J depth").fill(str(DEPTH))
            clicked = time.monotonic()
            page.get_by_role("button", name="Compute influence").click()
            expect(page.get_by_text("Most helpful")).to_be_visible(timeout=RESULT_TIMEOUT_S * 1000)
            seconds = time.monotonic() - clicked
            expect(page.get_by_text("Most harmful")).to_be_visible()
            expect(page.get_by_role("link", name="Open ").first).to_be_visible()
            shot = _save_screenshot(page, tmp_path, "browser_influence.png")
        except Exception:
            _save_screenshot(page, tmp_path, "browser_failure.png")
            raise
        finally:
            browser.close()
    with Store.open(root) as store:
        runs = store.list_influence_runs(example_id=example.id)
    assert len(runs) == 1 and runs[0].num_candidates > 0 and runs[0].config["s_test"]["depth"] == DEPTH
    ARTIFACTS.mkdir(exist_ok=True)
    record = {
        "example_id": example.id,
        "config": runs[0].config,
        "click_to_ranked_list_s": round(seconds, 2),
        "screenshot": str(shot),
        "run_timings_s": runs[0].timings,
        "num_candidates": runs[0].num_candidates,
    }
    (ARTIFACTS / "browser_journey.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record))
