"""Browse's paging in a real browser (``streamlit run`` + Debian's headless Chromium through Playwright).

Open Browse, jump to page 2, the middle page and the last page by typing the page number, filter to the
incorrect predictions, search a word, then open the last page's first row; each step is timed from the
action until the page shows the row range or the counts the store computes for it. On the tiny workspace
(pages of 50 rows) this runs with the suite; on a large one it is the issue-29 measurement, not run by
default: ``FASTIF_SCALE_WORKSPACE=~/ws/scale400k python -m pytest -m bench
tests/app/test_browse_browser.py`` writes ``test-artifacts/browse_<workspace>.json`` and a screenshot.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fastif_core.store import ExampleFilter, Store

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_graph_browser import ARTIFACTS, dashboard_page  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]
PAGE_LIMIT_MS = 180_000  # a generous wait for one step (the figures, not this, are the measurement)


def test_browse_paging_on_the_tiny_workspace(tiny_workspace: Path, tmp_path: Path) -> None:
    record = drive_browse(tiny_workspace, tmp_path, rows=50)
    assert record["pages"] >= 2


@pytest.mark.bench
def test_browse_paging_on_a_large_workspace(tmp_path: Path) -> None:
    """A measurement, not run by default (see the module docstring); the workspace is only read."""
    root = os.environ.get("FASTIF_SCALE_WORKSPACE")
    if not root:
        pytest.skip("set FASTIF_SCALE_WORKSPACE to a prepared workspace (e.g. ~/ws/scale400k)")
    root_path = Path(root).expanduser().resolve()
    record = drive_browse(root_path, tmp_path, rows=2000)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"browse_{root_path.name}.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record))


def _rows_caption(first: int, shown: int, count: int) -> str:
    return f"Rows {first + 1:,}–{first + shown:,} of {count:,} matching examples"


def drive_browse(root: Path, tmp_path: Path, rows: int) -> dict[str, Any]:
    """Drive Browse on ``root`` at ``rows`` per page; returns the step timings (seconds) and counts."""
    from playwright.sync_api import expect

    with Store.open(root) as store:
        count = store.summarize_examples().count
        wrong = store.summarize_examples(ExampleFilter(correct=False)).count
        pages = -(-count // rows)
        last_first = (pages - 1) * rows
        last_row = store.query_examples(limit=1, offset=last_first)[0]
        word = next(w for w in last_row.premise.split() if len(w) > 3)
        searched = store.summarize_examples(ExampleFilter(search=word)).count
    steps: dict[str, float] = {}
    timeout = {"timeout": PAGE_LIMIT_MS}
    with dashboard_page(root, tmp_path) as (url, page):
        t0 = time.monotonic()
        page.goto(url)
        metric = page.get_by_test_id("stMetricValue").first  # "Matching examples"
        expect(metric).to_have_text(f"{count:,}", **timeout)
        expect(page.get_by_test_id("stDataFrame").first).to_be_visible(**timeout)
        steps["open"] = time.monotonic() - t0
        if rows != 2000:
            page.get_by_test_id("stSelectbox").filter(has_text="Rows per page").click()
            page.get_by_role("option", name=str(rows), exact=True).click()
            expect(page.get_by_text(_rows_caption(0, rows, count))).to_be_visible(**timeout)
        box = page.get_by_role("spinbutton", name=re.compile(r"^Page \(of "))
        expect(box).to_be_visible(**timeout)
        for name, number in (("page_2", 2), ("page_middle", (pages + 1) // 2), ("page_last", pages)):
            first = (number - 1) * rows
            t0 = time.monotonic()
            box.fill(str(number))
            box.press("Enter")
            shown = min(rows, count - first)
            expect(page.get_by_text(_rows_caption(first, shown, count))).to_be_visible(**timeout)
            steps[name] = time.monotonic() - t0
        t0 = time.monotonic()
        page.get_by_role("radio", name="Incorrect", exact=True).click()
        expect(metric).to_have_text(f"{wrong:,}", **timeout)
        steps["filter_incorrect"] = time.monotonic() - t0
        page.get_by_role("radio", name="All", exact=True).click()
        expect(metric).to_have_text(f"{count:,}", **timeout)
        t0 = time.monotonic()
        search = page.get_by_role("textbox", name="Search text")
        search.fill(word)
        search.press("Enter")
        expect(metric).to_have_text(f"{searched:,}", **timeout)
        steps["search"] = time.monotonic() - t0
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / f"browse_{root.name}.png"
        page.screenshot(path=str(shot), full_page=True)
        t0 = time.monotonic()
        page.goto(f"{url}/example?example={last_row.id}")
        expect(page.get_by_text("Premise", exact=True)).to_be_visible(**timeout)
        expect(page.get_by_text(last_row.hypothesis).first).to_be_visible(**timeout)
        steps["example_page"] = time.monotonic() - t0
    return {
        "workspace": str(root),
        "examples": count,
        "rows_per_page": rows,
        "pages": pages,
        "incorrect": wrong,
        "search": word,
        "search_matches": searched,
        "seconds": {k: round(v, 3) for k, v in steps.items()},
        "screenshot": str(shot),
    }
