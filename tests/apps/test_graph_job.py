"""The graph application end to end on a real tiny prepared workspace: a ``graph`` job run by a real
worker (its influence matrix stored once, reused by a ``fastif matrix``-style request), every edge equal to
the single-example influence query of its test example, Tables 4-5 consistent with the edges, the layout on its circles, the same
request answered from the store, GraphML / node-link JSON round trips, ``fastif graph`` (JSON, export,
bad input: exit 2, one line, nothing stored), and the Graphs page rendering the stored graph (AppTest)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from fastif_core import jobs
from fastif_core.apps.graph import export
from fastif_core.apps.graph.build import build_graph
from fastif_core.apps.graph.config import GraphConfig
from fastif_core.apps.graph.stored import load_graph, to_networkx
from fastif_core.cli import main
from fastif_core.config import InfluenceConfig
from fastif_core.queries.influence import influence_query
from fastif_core.store import Store
from fastif_core.store import matrices as sm
from fastif_core.worker.loop import run_worker

REPO = Path(__file__).resolve().parents[2]
K = 5
CFG = GraphConfig(per_slice=1, influence=InfluenceConfig(k=K, top=1))
CLI = ["--per-slice", "1", "--k", str(K)]


@pytest.fixture(scope="module")
def graph_ws(tiny_workspace_template: Path, tmp_path_factory) -> tuple[Path, dict]:
    """A private workspace, then the graph job run by a worker."""
    ws = Path(shutil.copytree(tiny_workspace_template, tmp_path_factory.mktemp("graph") / "ws"))
    with Store.open(ws) as store:
        job = jobs.enqueue(store, "graph", CFG)
    assert run_worker(ws, "cpu:1", once=True, poll=0.1) == 1
    with Store.open(ws) as store:
        done = store.get_job(job.id)
    assert done.status == "done", done.error
    return ws, done.result


def test_the_worker_builds_the_graph_from_one_stored_influence_matrix(graph_ws):
    ws, job_result = graph_ws
    g = load_graph(ws, job_result["graph_id"])
    r = g.info.result
    assert r["num_test_nodes"] == len(r["slices"]) == 4 and r["num_edges"] == 4 * K
    m = r["influence_matrix"]
    assert m["computed"] > 0 and m["stored"] == m["derived"] == 0 and not m["cached"]
    assert r["num_nodes"] == 4 + r["num_train_nodes"] == 4 + len(g.arrays.train_ids)
    a = g.arrays
    with Store.open(ws) as store:
        (info,) = sm.list_matrices(store, g.info.model_id)
    assert info.id == m["matrix_id"] and info.test_ids == a.test_ids and info.status == "complete"
    for j, test_id in enumerate(a.test_ids):  # each row = that test's own single query (batched solve: 1e-5)
        single = influence_query(ws, test_id, CFG.influence)
        with Store.open(ws) as store:
            run = store.get_influence_run(single["run_id"], with_text=False)
        expected = {s.train_id: s.value for s in run.scores}
        rows = np.flatnonzero(a["edge_test"] == j)
        got = {a.train_ids[int(a["edge_train"][e])]: float(a["edge_value"][e]) for e in rows}
        assert got.keys() == expected.keys()
        scale = max(abs(v) for v in expected.values())
        assert all(abs(got[t] - expected[t]) <= 1e-5 * scale for t in got)
    assert all(not g.examples[t].correct and g.examples[t].train_pos is None for t in a.test_ids)


def test_tables_agree_with_the_edges_and_the_layout_lies_on_its_circles(graph_ws):
    ws, job_result = graph_ws
    g = load_graph(ws, job_result["graph_id"])
    r, a = g.info.result, g.arrays
    v = a["edge_value"]
    assert sum(s["edges"] for s in r["statistics"]) == v.size
    assert sum(s["helpful_edges"] for s in r["statistics"]) == int((v < 0).sum())
    for s, row in enumerate(r["statistics"]):
        in_slice = a["test_slice"][a["edge_test"]] == s
        harmful = v[in_slice & (v > 0)]
        assert row["harmful_mean_abs"] == pytest.approx(float(harmful.mean()) if harmful.size else None)
        assert r["correlation"]["count"][s][s] == row["train_nodes"]
    assert np.allclose(np.linalg.norm(a["test_xy"], axis=1), 1.0)
    for side in ("helpful_xy", "harmful_xy"):
        xy = a[side][~np.isnan(a[side][:, 0])]
        assert len(xy) and np.all(np.linalg.norm(xy, axis=1) <= CFG.inner_radius + 1e-9)


def test_the_same_request_is_answered_from_the_store(graph_ws):
    ws, job_result = graph_ws
    again = build_graph(ws, CFG)  # no model is loaded: the stored graph answers
    assert again["cached"] and again["graph_id"] == job_result["graph_id"]


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_export_round_trips_nodes_edges_and_attributes(graph_ws, tmp_path, fmt):
    ws, job_result = graph_ws
    g = to_networkx(load_graph(ws, job_result["graph_id"]))
    back = export.read(export.write(g, tmp_path / f"g.{fmt}", fmt), fmt)
    assert nx.utils.nodes_equal(g.nodes(data=True), back.nodes(data=True))
    assert nx.utils.edges_equal(g.edges(data=True), back.edges(data=True))
    kinds = nx.get_node_attributes(back, "kind")
    assert sorted(set(kinds.values())) == ["test", "train"]
    test_node = next(n for n, k in kinds.items() if k == "test")
    assert back.nodes[test_node]["slice"] and "||" in back.nodes[test_node]["text"]


def test_cli_prints_the_stored_graph_and_exports_it(graph_ws, tmp_path, capsys):
    ws, job_result = graph_ws
    assert main(["graph", "-w", str(ws), *CLI, "--in-process", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["graph_id"] == job_result["graph_id"] and out["cached"]
    assert {"num_nodes", "num_edges", "seconds", "statistics", "correlation"} <= set(out)
    assert main(["graph", "-w", str(ws), *CLI, "--in-process"]) == 0
    text = capsys.readouterr().out
    assert f"graph {out['graph_id']} [stored]: num_nodes={out['num_nodes']}" in text and "(n=" in text
    dest = tmp_path / "g.json"
    assert (
        main(
            ["graph", "-w", str(ws), "--export", str(out["graph_id"]), "--format", "json", "--out", str(dest)]
        )
        == 0
    )
    assert len(json.loads(dest.read_text())["links"]) == out["num_edges"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--per-slice", "0"], "--per-slice: invalid value '0'"),
        (
            ["--heuristic", "no_such_heuristic", "--k", "5", "--in-process"],
            "no evaluation example predicted incorrectly matches",
        ),
        (["--k", "100000", "--in-process"], "k=100000 is larger than the training set"),
        (["--export", "999", "--out", "x.graphml"], "graph 999 does not exist"),
        (["--export", "1"], "--export needs --out FILE"),
        (["--format", "xml"], "invalid choice: 'xml'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_with_nothing_stored(graph_ws, capsys, args, message):
    ws, _ = graph_ws
    with Store.open(ws) as store:
        before = [g.id for g in store.list_app_results("graph")], len(store.list_influence_runs(limit=1000))
    assert exit_code(["graph", "-w", str(ws), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    with Store.open(ws) as store:
        assert before == (
            [g.id for g in store.list_app_results("graph")],
            len(store.list_influence_runs(limit=1000)),
        )


def exit_code(argv: list[str]) -> int:
    """``fastif``'s exit status (argparse errors exit through SystemExit, the others return it)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def test_graphs_page_renders_the_stored_graph(graph_ws, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    ws, job_result = graph_ws
    monkeypatch.setenv("FASTIF_WORKSPACE", str(ws))
    monkeypatch.setenv("FASTIF_AUTOSTART_WORKER", "0")
    sys.path.insert(0, str(REPO))
    st.cache_data.clear()
    at = AppTest.from_file(str(REPO / "app" / "dashboard.py"), default_timeout=60)
    at.switch_page("views/graphs.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    r = load_graph(ws, job_result["graph_id"]).info.result
    captions = "\n".join(c.value for c in at.caption)
    assert (
        f"{r['num_nodes']:,} nodes ({r['num_test_nodes']} test" in captions
        and f"{r['num_edges']:,} edges" in captions
    )
    assert len(at.get("plotly_chart")) == 2  # the graph and the correlation heatmap
    assert [b.label for b in at.get("download_button")] == [
        "Download slice statistics (CSV)",
        "Download slice correlations (CSV)",
    ]
    table = at.dataframe[0].value
    assert (
        table["slice"].tolist() == r["slices"]
        and table["helpful edges"].sum() + table["harmful edges"].sum() <= r["num_edges"]
    )
    at.segmented_control(key=f"g{job_result['graph_id']}_view").set_value("Side by side").run()
    assert not at.exception and len(at.get("plotly_chart")) == 3
