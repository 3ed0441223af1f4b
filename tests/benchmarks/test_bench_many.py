"""``fastif bench --section many`` end to end on the tiny workspace: the four figures are written to
``many.json``; the batched run equals the single queries, the stored matrix reads back what was written,
the full matrix covers every training example, and ``--matrix-tests 0`` leaves the full matrix out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fastif_core.cli import main
from fastif_core.queries.matrix import load_matrix
from fastif_core.store import Store
from fastif_core.store import matrices as sm
from fastif_core.workspace.layout import require_prepared

ARGS = ["--section", "many", "--many-tests", "2", "--solver-k", "6", "--seed", "1"]


def _run(ws: Path, out: Path, *extra: str) -> dict:
    assert main(["bench", "--workspace", str(ws), "--out", str(out), *ARGS, *extra]) == 0
    return json.loads((out / "many.json").read_text())


def test_many_section_measures_batched_full_crossover_and_store(tiny_workspace: Path, tmp_path: Path):
    r = _run(tiny_workspace, tmp_path / "a", "--matrix-tests", "3", "--many-preset", "gauss_newton_direct")
    assert r["config"]["s_test"]["solver"] == "direct" and r["config"]["k"] == 6
    b = r["batched"]
    assert b["tests"] == 2 and b["k"] == 6 and 6 <= b["union_columns"] <= 12
    assert b["max_rel_diff"] < 1e-5  # one batched run = the two single queries
    assert b["batched_seconds"] > 0 and b["single_seconds"] > 0
    # the speed-up against the runs' own stage clocks (taken inside each run, so never longer than the wall
    # interval around it): single/batched lies between inner/wall and wall/inner of the two runs
    inner_batched, inner_single = b["batched_stages"]["total"], b["single_stages"]["total"]  # sum of singles
    assert 0 < inner_batched <= b["batched_seconds"] and 0 < inner_single <= b["single_seconds"]
    assert inner_single / b["batched_seconds"] <= b["speedup"] <= b["single_seconds"] / inner_batched
    assert r["store"]["equal"] and r["store"]["blocks"] == 13 * 8  # 400 x 8000 in 32 x 1024 blocks
    full = r["full"]
    info, values = load_matrix(tiny_workspace, full["matrix_id"])
    assert full["full"] and info.full and full["test_ids"] == 3 and info.status == "complete"
    assert values.shape == (3, require_prepared(tiny_workspace)["num_train"]) and np.isfinite(values).all()
    per_pair = r["crossover"]["seconds_per_pair"]
    assert set(per_pair) == {"1", "2", "4", "16", "32"}
    assert all(row["jvp"] > 0 and row["per_example"] > 0 for row in per_pair.values())


def test_matrix_tests_zero_leaves_the_full_matrix_out(tiny_workspace: Path, tmp_path: Path):
    r = _run(tiny_workspace, tmp_path / "b", "--matrix-tests", "0")
    assert "full" not in r and r["batched"]["max_rel_diff"] < 1e-5
    assert r["config"]["s_test"]["solver"] == "cg"  # the engine's default preset
    with Store.open(tiny_workspace) as store:
        assert sm.list_matrices(store) == []


def test_many_tests_zero_measures_the_cross_over_alone(tiny_workspace: Path, tmp_path: Path):
    r = _run(tiny_workspace, tmp_path / "c", "--many-tests", "0", "--matrix-tests", "0")
    assert "batched" not in r and "full" not in r and r["store"]["rows"] == 400
    assert set(r["crossover"]["seconds_per_pair"]) and r["crossover"]["cost_model_crossover_m"] is not None
