"""``fastif bench --section damping`` (issue 28): the sweep on the built-in corpus's tiny workspace (the
μ-dominated limit, the base μ against itself, a re-run that recomputes nothing), its influence against the
dense damped Gauss-Newton solve on a tiny float64 model, its stopping rule, and the variance share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from factories import make_tiny_bert, make_tiny_examples
from scipy import stats

from fastif_core.benchmarks.damping import (
    CellCache,
    converged,
    curvature_share,
    summarize,
    sweep_example,
    sweep_mus,
)
from fastif_core.config import STestConfig
from fastif_core.engine.curvature import exact_damped_solve
from fastif_core.engine.examples import sample_indices
from fastif_core.engine.influence import test_gradient
from fastif_core.engine.objective import classifier_objective
from fastif_core.engine.scoring import score_candidates, score_candidates_reference
from fastif_core.engine.solvers import solve
from fastif_core.store import Store
from fastif_core.workspace.layout import LoadedWorkspace

REPO = Path(__file__).resolve().parents[2]
K = 40  # of the tiny workspace's 60 training examples: the top-10 sets are not the whole candidate list


def _bench(ws: Path, out: Path) -> subprocess.CompletedProcess:
    args = ["--section", "damping", "--test-examples", "4", "--solver-k", str(K), "--damping-mus", "1e4,0.5"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "fastif_core", "bench", "-w", str(ws), "--out", str(out), *args]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    return run


def test_damping_section_on_the_built_in_corpus(tiny_workspace: Path, tmp_path: Path):
    out = tmp_path / "bench"
    first = _bench(tiny_workspace, out)
    result = json.loads((out / "damping.json").read_text())
    assert result["settings"]["mus"] == [1e4, 50.0, 0.5] and result["settings"]["base_mu"] == 50.0
    assert result["complete"] and [t["correct"] for t in result["tests"]].count(True) == 2
    assert result["computed"] == 4 * 4 and result["cached"] == 0  # per test: the dot product and 3 μ
    cells = [t["cells"] for t in result["tests"]]
    # μ = 1e4 dominates the curvature: I_μ = I_dot/μ up to O(λ/μ), λ <= ~1 on this model, CG residual 1e-3
    assert all(c["10000"]["limit_rel_error"] < 1e-3 for c in cells), [c["10000"] for c in cells]
    assert all(c["0.5"]["limit_rel_error"] > 0.1 for c in cells)  # and the measure sees the curvature
    for c in cells:  # the base μ against itself: the ranks and sets exactly, Pearson to float rounding
        same = c["50"]["vs_base"]
        assert same["pearson"] == pytest.approx(1.0, abs=1e-12)
        assert (same["spearman"], same["kendall"], same["top10_helpful"], same["top10_harmful"]) == (
            1,
            1,
            1,
            1,
        )
    # the numbers are what they claim: one cell recomputed here from the engine
    loaded = LoadedWorkspace.load(tiny_workspace, "cpu")
    with Store.open(tiny_workspace) as store:
        record = store.get_example(result["tests"][0]["id"], loaded.model_id).to_record()
    obj, train = loaded.objective, loaded.train
    v = test_gradient(obj, loaded.encode_test(record))
    cands = loaded.nearest(result["tests"][0]["id"], K)[0]
    dot = score_candidates_reference(obj, v, train, cands).double()  # per-example backward: another path
    s = solve(obj, v, train, STestConfig.preset("default", mu=0.5)).s_test
    infl = score_candidates(obj, s, train, cands).double()
    cell = cells[0]["0.5"]
    assert cell["vs_dot"]["pearson"] == pytest.approx(stats.pearsonr(infl, dot)[0], abs=1e-6)
    assert cell["vs_dot"]["spearman"] == pytest.approx(stats.spearmanr(infl, dot)[0], abs=1e-6)
    assert cell["limit_rel_error"] == pytest.approx(float((infl - dot / 0.5).norm() / infl.norm()), rel=1e-4)
    assert cell["converged"] and cell["iterations"] >= 1
    # resume: the same --out again reads every cell back and writes the same figures
    files = sorted((out / "damping-cache").glob("*.json"))
    stamps = [f.stat().st_mtime_ns for f in files]
    second = _bench(tiny_workspace, out)
    again = json.loads((out / "damping.json").read_text())
    assert len(files) == 16 and [f.stat().st_mtime_ns for f in files] == stamps
    assert again["computed"] == 0 and again["cached"] == 16
    drop = ("seconds", "computed", "cached")
    assert {k: v for k, v in again.items() if k not in drop} == {
        k: v for k, v in result.items() if k not in drop
    }
    assert "| 0.5 |" in first.stdout and second.stdout == first.stdout


def _float64_bert(n: int = 16):
    """The tiny BERT in float64 with its last layer's output block, the pooler and the classifier trainable."""
    model = make_tiny_bert(0, dtype=torch.float64)
    keep = ("bert.encoder.layer.1.output", "bert.pooler", "classifier")
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(keep))
    obj, train = classifier_objective(model, weight_decay=0.01), make_tiny_examples(n)
    return obj, train, test_gradient(obj, make_tiny_examples(1, seed=5).collate([0]))


def test_sweep_equals_the_exact_damped_gauss_newton_solve(tmp_path: Path):
    obj, train, v = _float64_bert()
    cands = list(range(len(train)))
    base = STestConfig.preset("default", batch_size=8, tolerance=1e-12, depth=500, seed=3)
    cache = CellCache(tmp_path / "cache", {"model": "tiny-float64"})
    out = sweep_example(obj, train, v, cands, sweep_mus([0.05], 50.0), base, cache, "t0")
    rows = sample_indices(len(train), 8, torch.Generator().manual_seed(3))  # the batch CG draws (seed 3)
    dot = score_candidates_reference(obj, v, train, cands)
    for mu in (50.0, 0.05):
        s = exact_damped_solve(obj, train.collate(rows), v, mu, curvature="gauss_newton")
        exact = score_candidates_reference(obj, s, train, cands)
        cell = out["cells"][f"{mu:g}"]
        assert cell["converged"] and cell["residual"] <= 1e-12
        limit = float((exact - dot / mu).norm() / exact.norm())
        assert cell["limit_rel_error"] == pytest.approx(limit, rel=1e-6)
        assert cell["curvature_share"] == pytest.approx(1 - stats.pearsonr(exact, dot)[0] ** 2, abs=1e-9)
        assert cell["norm"] == pytest.approx(float(s.norm()), rel=1e-6)
    assert out["cells"]["0.05"]["limit_rel_error"] > 1.0  # at μ = 0.05 the curvature dominates
    # the stored values themselves, against the exact solve's scores
    stored = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*-mu0.05-*.json")]
    exact = score_candidates_reference(
        obj, exact_damped_solve(obj, train.collate(rows), v, 0.05, curvature="gauss_newton"), train, cands
    )
    torch.testing.assert_close(
        torch.tensor(stored[0]["values"], dtype=torch.float64), exact, rtol=1e-6, atol=0
    )


def test_the_descent_stops_at_a_failed_or_unconverged_solve(tmp_path: Path):
    obj, train, v = _float64_bert()
    cands, mus = list(range(len(train))), [50.0, 0.5, 0.05, 0.005]
    base = STestConfig.preset("default", batch_size=8, tolerance=1e-6, depth=500, seed=3)
    ok = sweep_example(obj, train, v, cands, mus, base, CellCache(tmp_path / "a", {}), "t0")["cells"]
    assert all(ok[f"{m:g}"]["converged"] for m in mus) and ok["0.05"]["iterations"] > 4
    # ‖s‖ grows as μ falls: a max_norm between μ = 50's and μ = 0.5's makes the solve at 0.5 fail
    capped = replace(base, max_norm=(ok["50"]["norm"] * ok["0.5"]["norm"]) ** 0.5)
    cells = sweep_example(obj, train, v, cands, mus, capped, CellCache(tmp_path / "b", {}), "t0")["cells"]
    assert cells["50"]["converged"] and "max_norm" in cells["0.5"]["error"]
    assert cells["0.05"]["skipped"] == cells["0.005"]["skipped"] == "the solve at μ = 0.5 failed"
    # four iterations reach the tolerance at μ = 0.5 but not at 0.05: recorded, then the descent stops
    short = replace(base, depth=4)
    cells = sweep_example(obj, train, v, cands, mus, short, CellCache(tmp_path / "c", {}), "t0")["cells"]
    assert cells["0.5"]["converged"] and cells["0.05"]["converged"] is False
    assert "did not converge in 4 iterations" in cells["0.005"]["skipped"]
    table = summarize([{"id": "t0", "correct": True, "cells": cells}], mus)
    assert table["0.05"]["all"]["not_converged"] == 1 and table["0.05"]["all"]["curvature_share"]["n"] == 0
    assert table["0.005"]["correct"]["skipped"] == 1 and table["0.005"]["incorrect"]["tests"] == 0


def test_curvature_share_on_hand_made_vectors():
    dot = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    noise = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)  # uncorrelated with dot, variance 1
    assert curvature_share(3.0 * dot - 7.0, dot) == pytest.approx(0.0, abs=1e-12)  # an affine image of dot
    assert curvature_share(-dot, dot) == pytest.approx(0.0, abs=1e-12)
    assert curvature_share(noise, dot) == pytest.approx(1.0, abs=1e-12)
    # Var(dot) = 1.25, Var(noise) = 1: the share of dot + noise that dot does not explain is 1 / 2.25
    assert curvature_share(dot + noise, dot) == pytest.approx(1.0 / 2.25, abs=1e-12)
    assert curvature_share(torch.ones(4, dtype=torch.float64), dot) is None


def test_the_direct_sweep_builds_one_factor_per_mu_and_agrees_with_cg(
    tiny_workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from fastif_core.benchmarks.common import choose_test_examples
    from fastif_core.benchmarks.damping import run_section
    from fastif_core.engine import woodbury

    loaded = LoadedWorkspace.load(tiny_workspace, "cpu")
    with Store.open(tiny_workspace) as store:
        examples = choose_test_examples(store, loaded, 4, 0)
    built = []
    real = woodbury.factor
    monkeypatch.setattr(woodbury, "factor", lambda obj, batch, mu: built.append(mu) or real(obj, batch, mu))
    mus = (50.0, 0.5, 0.005)
    direct = run_section(loaded, examples, tmp_path / "direct", mus=mus, k=K, preset="gauss_newton_direct")
    assert built == [50.0, 0.5, 0.005]  # μ-major: one factor per μ served all 4 test examples
    # the direct solve has no tolerance of its own: it is judged by the default CG's (1e-3)
    direct_cfg = STestConfig.preset("gauss_newton_direct")
    assert converged({"residual": 5e-4}, direct_cfg) and not converged({"residual": 2e-3}, direct_cfg)
    assert not converged({"residual": 5e-4}, STestConfig.preset("default", tolerance=1e-4))
    assert direct["settings"]["s_test"]["solver"] == "direct" and direct["complete"]
    cg = run_section(loaded, examples, tmp_path / "cg", mus=mus, k=K, depth=200)
    for a, b in zip(direct["tests"], cg["tests"], strict=True):
        for mu in ("0.5", "0.005"):
            x, y = a["cells"][mu], b["cells"][mu]
            assert x["converged"] and y["converged"]
            # CG stops at a 1e-3 relative residual: its scores agree with the exact solve's to about that
            assert x["vs_dot"]["pearson"] == pytest.approx(y["vs_dot"]["pearson"], abs=1e-3)
            assert x["norm"] == pytest.approx(y["norm"], rel=1e-2)
