"""The applications with ``--method sketch`` on a real tiny workspace with a built sketch index: the graph
keeps the exact graph's candidates (each test's k nearest) and every edge is that test's own sketch query;
the simulatability study's explanations are the sketch ranking over all N; both are stored under keys of
their own, while the exact configurations keep the keys they had before the method existed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fastif_core.apps.graph.config import GraphConfig
from fastif_core.apps.graph.stored import load_graph
from fastif_core.apps.simulate.config import SimulateConfig, result_key
from fastif_core.cli import main
from fastif_core.config import InfluenceConfig, SketchConfig, SketchQueryConfig, config_hash, to_dict
from fastif_core.queries.sketch import influence_sketch_query
from fastif_core.store import Store
from fastif_core.workspace.layout import LoadedWorkspace
from fastif_core.workspace.sketches import build_sketches

DIM = ["--sketch-dim", "300"]
QCFG = SketchQueryConfig(SketchConfig(dim=300))
K = 5


@pytest.fixture(autouse=True)
def _one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture
def sketched(tiny_workspace: Path) -> Path:
    build_sketches(LoadedWorkspace.load(tiny_workspace, search=False), QCFG.sketch)
    return tiny_workspace


def _sketch_values(ws: Path, example_id: str, cfg: InfluenceConfig) -> dict[str, float]:
    out = influence_sketch_query(ws, example_id, cfg, QCFG)
    with Store.open(ws) as store:
        run = store.get_influence_run(out["run_id"], with_text=False)
    return {s.train_id: s.value for s in run.scores}


def test_exact_configurations_keep_their_stored_keys():
    """Keys hashed before ``method`` existed: the exact default must not move (stored graphs and studies
    would be recomputed); the sketch method gets a key of its own."""
    g = GraphConfig()
    assert "method" not in g.stored() and "sketch" not in g.stored()
    legacy = to_dict(g)
    for name in ("method", "sketch", "row_block"):
        legacy.pop(name)
    legacy["influence"].pop("top")
    assert config_hash(g.stored()) == config_hash(legacy)
    assert config_hash(GraphConfig(method="sketch").stored()) != config_hash(g.stored())
    s = SimulateConfig()
    legacy = to_dict(s)
    for name in ("method", "sketch", "lr_chunk"):
        legacy.pop(name)
    assert result_key(s) == config_hash(legacy) != result_key(SimulateConfig(method="sketch"))


def test_graph_with_sketch_values_on_the_exact_candidates(sketched: Path, capsys):
    rc = main(
        ["graph", "-w", str(sketched), "--per-slice", "1", "--k", str(K), "--method", "sketch", *DIM]
        + ["--in-process", "--device", "cpu", "--json"]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    g = load_graph(sketched, out["graph_id"])
    assert g.info.config["method"] == "sketch"
    a = g.arrays
    loaded = LoadedWorkspace.load(sketched)
    cfg = InfluenceConfig(k=K, top=1)
    for j, test_id in enumerate(a.test_ids):
        rows = np.flatnonzero(a["edge_test"] == j)
        got = {a.train_ids[int(a["edge_train"][e])]: float(a["edge_value"][e]) for e in rows}
        nearest = {loaded.train_ids[i] for i in loaded.nearest(test_id, K)[0]}
        assert set(got) == nearest  # the exact graph's candidates, not the sketch's top
        want = _sketch_values(sketched, test_id, cfg)
        scale = max(abs(v) for v in want.values())
        # the matrix is solved for a block of tests and stored as float32; the query one test in float64
        assert all(abs(got[t] - want[t]) <= 1e-5 * scale for t in got), test_id
    exact = GraphConfig(per_slice=1, influence=InfluenceConfig(k=K, top=1))
    with Store.open(sketched) as store:  # the sketch graph never answers the exact request
        assert store.find_app_result("graph", config_hash(exact.with_model(1).stored()), model_id=1) is None


def test_simulate_explanations_are_the_sketch_ranking(sketched: Path, capsys):
    from fastif_core.apps.simulate.run import simulate

    cfg = SimulateConfig(
        test_examples=2,
        learning_rates=2,
        lr_min=1e-3,
        lr_max=1e-2,
        per_kind=2,
        method="sketch",
        sketch=QCFG,
    ).validate()
    result = simulate(sketched, cfg, device="cpu")
    loaded = LoadedWorkspace.load(sketched, search=False)
    assert len(result["examples"]) == 2
    for ex in result["examples"]:
        with Store.open(sketched) as store:
            run = store.get_influence_run(ex["influence_run_id"], with_text=False)
        assert run.config["method"] == "sketch" and run.num_candidates == len(loaded.train_ids)
        values = _sketch_values(sketched, ex["example_id"], cfg.influence_config(len(loaded.train_ids)))
        ranked = sorted(values, key=values.__getitem__)
        assert ex["explanations"]["helpful"] == ranked[:2]
        assert ex["explanations"]["harmful"] == ranked[::-1][:2]
