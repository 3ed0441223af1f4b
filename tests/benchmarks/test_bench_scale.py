"""``fastif bench --section scale`` (issue 29) through the CLI on the tiny workspace: the JSON's structure and
what its figures must satisfy (IVF recall against Flat, the store's counts, the rows of a page at an offset,
the graph's edges, the jobs inserted into a copy of the database, never the original); a re-run keeps the
parts already measured. No timing is asserted."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fastif_core.benchmarks.scale import PARTS, recall_at_k
from fastif_core.store import ExampleFilter, Store
from fastif_core.workspace.layout import read_manifest

REPO = Path(__file__).resolve().parents[2]
SMALL = [
    *("--scale-repeats", "2", "--scale-k", "5", "--scale-queries", "20"),
    *("--scale-nlist", "4", "--scale-nprobes", "1,2,4"),
    *("--scale-page-size", "10", "--scale-offsets", "0,25,50,145"),
    *("--scale-click-k", "10", "--scale-click-examples", "2"),
    *("--scale-graph-per-slice", "1", "--scale-graph-k", "5", "--scale-jobs", "250"),
]
TIMING = {"seconds", "peak_rss_mb", "peak_growth_mb", "fingerprint"}


def _bench(ws: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "fastif_core",
        "bench",
        "-w",
        str(ws),
        "--out",
        str(out),
        "--section",
        "scale",
    ]
    return subprocess.run([*cmd, *SMALL, *extra], env=env, capture_output=True, text=True, timeout=900)


def _jobs_in(db: Path) -> int:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT count(*) FROM jobs").fetchone()[0]


def test_scale_section_on_the_tiny_workspace(tiny_workspace: Path, tmp_path: Path):
    jobs_before = _jobs_in(tiny_workspace / "fastif.db")
    run = _bench(tiny_workspace, tmp_path / "out")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "wrote" in run.stdout and "faiss" in run.stdout
    result = json.loads((tmp_path / "out" / "scale.json").read_text())
    manifest = read_manifest(tiny_workspace)
    assert result["complete"] and result["ran"] == list(PARTS) and result["kept"] == []
    assert result["num_train"] == 60 and result["build"] == manifest["build"]
    parts = result["parts"]
    for name in PARTS:
        assert set(parts[name]) >= TIMING, name
        assert parts[name]["peak_rss_mb"] >= parts[name]["peak_growth_mb"] >= 0

    faiss = parts["faiss"]  # 60 training vectors, 4 cells; the held-out examples are the queries
    assert faiss["ivf"]["nlist"] == 4 and faiss["k"] == 5 and faiss["queries"] == 20
    assert faiss["queries_from"] == "held-out"
    assert set(faiss["ivf"]["nprobe"]) == {"1", "2", "4"}
    for probe in faiss["ivf"]["nprobe"].values():
        assert 0.0 <= probe["recall"] <= 1.0 and probe["query_ms"]["n"] == 2
    assert faiss["ivf"]["nprobe"]["4"]["recall"] == 1.0  # every cell probed: exact
    assert faiss["flat"]["mb"] > 0 and faiss["ivf"]["mb"] > 0 and faiss["flat"]["build"]["n"] == 2

    near = parts["neighbours"]  # N = 60: "auto" lists with the workspace's exact index, as stored
    assert (near["index"], near["k"], near["examples"]) == ("Flat", 5, 150)
    assert near["stored_index"] == "Flat" and near["compared"] == 150 and near["recall_vs_stored"] == 1.0

    browse = parts["browse"]
    with Store.open(tiny_workspace) as store:
        for name, entry in browse["filters"].items():
            f = ExampleFilter(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in entry["filter"].items()}
            )
            assert entry["count"] == store.count_examples(f), name
            assert entry["rows"] == min(10, entry["count"]), name
        ordered = [r.id for r in store.query_examples(limit=None)]  # the Browse order: by id
    with sqlite3.connect(tiny_workspace / "fastif.db") as c:  # counted without the store's code
        members = c.execute("SELECT count(*) FROM examples WHERE in_workspace").fetchone()[0]
        training = c.execute("SELECT count(*) FROM examples WHERE train_pos IS NOT NULL").fetchone()[0]
    assert browse["filters"]["none"]["count"] == members == len(ordered) == 150
    assert browse["filters"]["training"]["count"] == training == 60
    assert browse["filters"]["label"]["filter"]["label"] and 0 < browse["filters"]["label"]["count"] < 150
    assert set(browse["pages"]) == {"0", "25", "50", "145"}
    for offset, page in browse["pages"].items():
        want = ordered[int(offset) : int(offset) + 10]
        assert page["rows"] == len(want) and (page["first_id"], page["last_id"]) == (want[0], want[-1])
    assert browse["pages"]["145"]["rows"] == 5  # the last, short page
    assert browse["summarize_by"]["split"]["groups"] >= 2

    example = parts["example"]["examples"]
    assert len(example) == 3 and all(e["found"] and e["neighbors"] == 5 for e in example.values())

    click = parts["click"]
    assert click["k"] == 10 and len(click["examples"]) == 2
    assert {"knn", "test_gradient", "s_test", "scoring", "total"} <= set(click["stages"])
    assert "skipped" in parts["sketch"]  # the tiny workspace has no sketch index

    graph = parts["graph"]  # one incorrectly predicted test per slice, 5 candidates each: 5 edges each
    assert graph["tests"] == graph["num_test_nodes"] >= 1 and graph["k"] == 5
    assert graph["num_edges"] == 5 * graph["tests"]
    assert 5 <= graph["num_train_nodes"] <= min(60, graph["num_edges"])
    assert graph["num_nodes"] == graph["tests"] + graph["num_train_nodes"]

    imported = parts["import"]  # the build published again into a temporary SQLite file
    with sqlite3.connect(tiny_workspace / "fastif.db") as c:
        model_id = manifest["model_id"]
        rows = c.execute("SELECT count(*) FROM neighbors WHERE model_id = ?", (model_id,)).fetchone()[0]
    assert imported["examples"] == imported["stored"]["examples"] == 150
    assert imported["stored"]["training"] == 60 and imported["predictions"] == 150
    assert imported["neighbour_rows"] == imported["stored"]["neighbours"] == rows == 150 * 5
    assert imported["database_mb"] > 0 and imported["database"].startswith("sqlite")

    jobs = parts["jobs"]
    assert jobs["example_jobs_found"] >= 1  # the Example page's look-up finds the jobs of its example
    assert jobs["inserted"] == 250 and jobs["listed_all"] == jobs["before"] + 250
    assert sum(jobs["counts"].values()) == jobs["listed_all"] and jobs["page_rows"] == 200
    assert _jobs_in(tiny_workspace / "fastif.db") == jobs_before  # the original database is untouched

    again = _bench(tiny_workspace, tmp_path / "out", "--scale-parts", "browse,jobs")
    assert again.returncode == 0, again.stderr[-3000:]
    kept = json.loads((tmp_path / "out" / "scale.json").read_text())
    assert kept["ran"] == [] and kept["kept"] == ["browse", "jobs"]  # same build and options: kept
    assert kept["parts"] == parts
    fresh = _bench(tiny_workspace, tmp_path / "out", "--scale-parts", "jobs", "--scale-jobs", "20")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    redone = json.loads((tmp_path / "out" / "scale.json").read_text())
    assert redone["ran"] == ["jobs"] and redone["parts"]["jobs"]["inserted"] == 20  # other options: again
    assert redone["parts"]["browse"] == parts["browse"]


def test_bad_scale_parts_exit_2_with_one_line(tiny_workspace: Path, tmp_path: Path):
    run = _bench(tiny_workspace, tmp_path / "out", "--scale-parts", "faiss,pages")
    assert (
        run.returncode == 2
        and "faiss, neighbours, browse, example" in run.stderr
        and "Traceback" not in run.stderr
    )


def test_recall_counts_ties_at_the_kth_distance_as_found():
    import numpy as np

    ref_d, ref_p = np.array([[0.0, 1.0, 2.0]]), np.array([[0, 1, 2]])
    assert recall_at_k(ref_d, ref_p, ref_d, ref_p) == 1.0
    assert recall_at_k(np.array([[0.0, 1.0, 2.0]]), np.array([[0, 1, 7]]), ref_d, ref_p) == 1.0  # a tie
    assert recall_at_k(np.array([[0.0, 1.0, 3.0]]), np.array([[0, 1, 7]]), ref_d, ref_p) == pytest.approx(
        2 / 3
    )


@pytest.mark.slow
def test_scale_sketch_click_over_all_n_once_an_index_exists(tiny_workspace: Path, tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    built = subprocess.run(
        [sys.executable, "-m", "fastif_core", "sketch", "-w", str(tiny_workspace)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    run = _bench(tiny_workspace, tmp_path / "out", "--scale-parts", "sketch")
    assert run.returncode == 0, run.stderr[-3000:]
    sketch = json.loads((tmp_path / "out" / "scale.json").read_text())["parts"]["sketch"]
    assert "skipped" not in sketch and sketch["num_train"] == 60 and sketch["dim"] > 0
    assert sketch["click"]["n"] == 2 and {"test_gradient", "scoring", "total"} <= set(sketch["last_split"])


def test_scale_import_and_jobs_into_a_scratch_database(tiny_workspace: Path, tmp_path: Path, db_url: str):
    """``--scale-db-url``: the build re-imported into an empty database (SQLite, and PostgreSQL with
    FASTIF_TEST_PG_URL) holds what the workspace's store holds; the jobs go there; a database that already
    holds examples is refused with one line and exit 2, and is left as it was."""
    if db_url.startswith("sqlite"):  # the fixture's SQLite path is the tiny workspace's own database
        db_url = f"sqlite:///{tmp_path / 'scratch' / 'fastif.db'}"
    run = _bench(tiny_workspace, tmp_path / "out", "--scale-parts", "import,jobs", "--scale-db-url", db_url)
    assert run.returncode == 0, run.stderr[-3000:]
    parts = json.loads((tmp_path / "out" / "scale.json").read_text())["parts"]
    model_id = read_manifest(tiny_workspace)["model_id"]
    with Store.open(tiny_workspace) as src, Store.open(url=db_url) as dst:
        target = dst.find_model(config_hash=src.get_model(model_id).config_hash)
        assert target is not None and dst.train_ids(target.id) == src.train_ids(model_id)
        assert dst.neighbor_lists(target.id) == src.neighbor_lists(model_id)
        a = {r.id: (r.label, r.predicted, r.probs) for r in src.query_examples(model_id=model_id, limit=None)}
        b = {
            r.id: (r.label, r.predicted, r.probs) for r in dst.query_examples(model_id=target.id, limit=None)
        }
        assert a == b and len(a) == parts["import"]["examples"] == 150
        assert sum(dst.job_counts().values()) == parts["jobs"]["listed_all"] == 250
    assert parts["import"]["database_mb"] > 0
    again = _bench(
        tiny_workspace, tmp_path / "out", "--scale-parts", "import", "--scale-fresh", "--scale-db-url", db_url
    )
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert "already holds 150 examples" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    with Store.open(url=db_url) as dst:
        assert dst.count_examples() == 150 and sum(dst.job_counts().values()) == 250


def test_scale_neighbours_through_an_ivf_against_the_stored_exact_lists(tiny_workspace: Path, tmp_path: Path):
    """An IVF of 2 cells probed at 32 (so all): the lists of the stored exact search, recall 1."""
    run = _bench(
        tiny_workspace,
        tmp_path / "out",
        "--scale-parts",
        "neighbours",
        "--scale-neighbors-index",
        "IVF2,Flat",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    near = json.loads((tmp_path / "out" / "scale.json").read_text())["parts"]["neighbours"]
    assert (near["index"], near["nprobe"], near["compared"]) == ("IVF2,Flat", 32, 150)
    assert near["recall_vs_stored"] == 1.0
