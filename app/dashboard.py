"""fastif dashboard: browse examples, open one, compute its influential training examples.

Run from the repository root: ``streamlit run app/dashboard.py`` (workspace: $FASTIF_WORKSPACE or
./workspaces/demo). The script reads the store and enqueues jobs; a background worker does the work.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run app/dashboard.py` puts only app/ on the path
    sys.path.insert(0, str(ROOT))

from app import data_access as da  # noqa: E402
from app import shell  # noqa: E402

st.set_page_config(page_title="fastif", page_icon=str(ROOT / "assets" / "logo.svg"), layout="wide")

PAGES = {
    "browse": st.Page("views/browse.py", title="Browse", icon=":material/table_rows:", default=True),
    "example": st.Page("views/example.py", title="Example", icon=":material/article:", url_path="example"),
    "graphs": st.Page("views/graphs.py", title="Graphs", icon=":material/hub:", url_path="graphs"),
    "correct": st.Page("views/correct.py", title="Correct", icon=":material/healing:", url_path="correct"),
    "explain": st.Page("views/explain.py", title="Explain", icon=":material/psychology:", url_path="explain"),
    "jobs": st.Page("views/jobs.py", title="Jobs", icon=":material/pending_actions:", url_path="jobs"),
    "bench": st.Page("views/bench.py", title="Bench", icon=":material/speed:", url_path="bench"),
}

page = st.navigation(list(PAGES.values()))
root = da.workspace_root()
state = da.workspace_state(root)
worker = da.ensure_worker(root)
shell.sidebar(state, worker, da.worker_lifetime(root, worker))
if page is PAGES["browse"] and "example" in st.query_params:  # deep link /?example=<id>
    st.switch_page(PAGES["example"], query_params={"example": st.query_params["example"]})
if state.ready or page is PAGES["jobs"]:
    page.run()
else:
    shell.onboarding(state)
