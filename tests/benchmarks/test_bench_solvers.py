"""The s_test solver comparison (``fastif bench --section solvers``) on a real tiny workspace: the reference
is resumable, every number is recomputed independently here, and the choice follows the floors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from scipy import stats

from fastif_core.benchmarks.common import choose_test_examples
from fastif_core.benchmarks.solvers import (
    REF_SEED,
    fill_references,
    model_key,
    overlap,
    run_solver_section,
    summarize,
)
from fastif_core.config import STestConfig
from fastif_core.engine.influence import test_gradient
from fastif_core.engine.scoring import score_candidates
from fastif_core.engine.solvers import solve
from fastif_core.store import Store
from fastif_core.workspace.layout import LoadedWorkspace

REF = STestConfig.fast(depth=40, scale=200.0)
SOLVERS = {
    "same_as_reference": REF,  # its seed differs: a second LiSSA run, not the reference itself
    "gn_cg": STestConfig.gauss_newton_cg(batch_size=8, mu=REF.damping * REF.scale),
    "doomed": STestConfig.fast(depth=200, scale=1e-3, max_norm=1e3),  # diverges: recorded, not raised
}


def _examples(ws: Path):
    loaded = LoadedWorkspace.load(ws, "cpu")
    with Store.open(ws) as store:
        return loaded, choose_test_examples(store, loaded, 2, 0)


def test_solver_section_numbers_and_resume(tiny_workspace: Path, tmp_path: Path):
    loaded, examples = _examples(tiny_workspace)
    out = tmp_path / "solvers"
    result = run_solver_section(
        loaded,
        examples,
        out,
        ref_repeats=2,
        k=12,
        solvers=SOLVERS,
        click=False,
        l2_examples=examples[:1],
        ref_cfg=REF,
    )
    assert json.loads((out / "solvers.json").read_text())["summary"] == json.loads(
        json.dumps(result["summary"])
    )
    ex, first = examples[0], result["examples"][0]
    # the reference is the mean of the paper-preset repetitions with seeds REF_SEED + t, recomputed here
    obj, train = loaded.objective, loaded.train
    v = test_gradient(obj, ex.batch)
    reps = [
        solve(obj, v, train, STestConfig(**{**REF.__dict__, "seed": REF_SEED + t})).s_test for t in range(2)
    ]
    ref = torch.stack(reps).mean(0)
    candidates = loaded.nearest(ex.id, 12)[0]
    ref_scores = score_candidates(obj, ref, train, candidates)
    # one repetition against the other (T-1 = 1): the paper preset's own run-to-run agreement
    rep_scores = [score_candidates(obj, r, train, candidates) for r in reps]
    held = first["reference"]["held_out_repetition"]
    assert held["repeats_in_reference"] == 1
    assert held["pearson"]["mean"] == pytest.approx(stats.pearsonr(*rep_scores)[0], abs=1e-6)
    assert held["rel_error"]["mean"] == pytest.approx(
        0.5 * sum(float((a - b).norm() / b.norm()) for a, b in (reps, reps[::-1])), rel=1e-5
    )
    gn = solve(obj, v, train, SOLVERS["gn_cg"])
    gn_scores = score_candidates(obj, gn.s_test, train, candidates)
    row = first["solvers"]["gn_cg"]
    assert row["pearson"] == pytest.approx(stats.pearsonr(gn_scores, ref_scores)[0], abs=1e-6)
    assert row["rel_error"] == pytest.approx(float((gn.s_test - ref).norm() / ref.norm()), rel=1e-5)
    assert row["overlap"] == overlap(gn_scores, ref_scores) and row["stats"]["solver"] == "cg"
    assert "diverged" in first["solvers"]["doomed"]["error"]
    table = result["summary"]["table"]
    assert (
        table["doomed"]["runs"] == 0
        and not table["doomed"]["meets"]
        and len(table["doomed"]["failures"]) == 2
    )
    l2 = result["l2_convention"][0]
    assert set(l2["helpful"]) == {"none", "test_and_train"} and -1.0 <= l2["rank_pearson"] <= 1.0
    # resume: the stored reference repetitions are read back, not recomputed
    files = sorted((out / "reference").rglob("rep*.safetensors"))
    assert len(files) == 2 * len(examples)
    stamps = [f.stat().st_mtime_ns for f in files]
    again = run_solver_section(
        loaded,
        examples[:1],
        out,
        ref_repeats=2,
        k=12,
        solvers={"gn_cg": SOLVERS["gn_cg"]},
        click=False,
        ref_cfg=REF,
    )
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert again["examples"][0]["solvers"]["gn_cg"]["pearson"] == pytest.approx(row["pearson"], abs=1e-6)
    # one part alone (the L2 check) keeps the comparison stored by the run before it
    l2_only = run_solver_section(
        loaded,
        examples[:1],
        out,
        ref_repeats=2,
        k=12,
        solvers={"gn_cg": SOLVERS["gn_cg"]},
        click=False,
        ref_cfg=REF,
        parts=("l2",),
        l2_examples=examples[1:],
    )
    assert l2_only["examples"] == json.loads(json.dumps(again["examples"]))
    assert [r["id"] for r in l2_only["l2_convention"]] == [examples[1].id]
    assert json.loads((out / "solvers.json").read_text())["l2_convention"][0]["id"] == examples[1].id


def test_references_fill_repetition_major_and_are_keyed_by_checkpoint(tiny_workspace: Path, tmp_path: Path):
    loaded, examples = _examples(tiny_workspace)
    cache = tmp_path / "reference"
    fill_references(loaded, examples, 1, cache, ref_cfg=REF)
    first = sorted(cache.rglob("rep*.safetensors"))
    assert [f.name for f in first] == ["rep0.safetensors"] * len(examples)  # every example's rep 0, no rep 1
    assert {f.parent.name for f in first} == {re.sub(r"[^A-Za-z0-9_.-]+", "_", e.id) for e in examples}
    stamps = [f.stat().st_mtime_ns for f in first]
    fill_references(loaded, examples, 2, cache, ref_cfg=REF)  # resumes: rep 0 read back, rep 1 added
    assert [f.stat().st_mtime_ns for f in first] == stamps
    assert len(list(cache.rglob("rep1.safetensors"))) == len(examples)
    # a shard fills every N-th example's reference only (N processes share the work, one cache)
    sharded = tmp_path / "sharded"
    run_solver_section(
        loaded,
        examples,
        sharded,
        ref_repeats=1,
        k=12,
        parts=("reference",),
        ref_cfg=REF,
        ref_shard=(1, 2),
        click=False,
    )
    assert [f.parent.name for f in sharded.rglob("rep*.safetensors")] == [
        re.sub(r"[^A-Za-z0-9_.-]+", "_", examples[1].id)
    ]
    # the key is the checkpoint's content: the same model id with other weights is another directory
    key = model_key(loaded)
    assert key.startswith(f"model{loaded.model_id}-") and all(p.parts[len(cache.parts)] == key for p in first)
    ckpt = next((tiny_workspace / "models" / str(loaded.model_id)).glob("*.safetensors"))
    moved = tmp_path / "ws_other_weights"
    shutil.copytree(tiny_workspace, moved)
    target = moved / "models" / str(loaded.model_id) / ckpt.name
    target.write_bytes(target.read_bytes()[:-1] + bytes([target.read_bytes()[-1] ^ 1]))
    other = LoadedWorkspace.load(moved, "cpu")
    assert model_key(other) != key


def test_choice_is_the_fastest_solver_above_both_floors():
    def example(p, help_, harm, sec):
        return {
            "pearson": p,
            "rel_error": 0.1,
            "overlap": {"helpful": help_, "harmful": harm},
            "seconds": sec,
            "stats": {"hvps": 10},
        }

    per_example = [
        {
            "solvers": {
                "slow_good": example(0.999, 0.9, 0.9, 100.0),
                "fast_good": example(0.995, 0.8, 0.9, 5.0),
                "fastest_bad": example(0.98, 1.0, 1.0, 1.0),
                "overlap_bad": example(0.999, 0.7, 1.0, 2.0),
            }
        }
    ]
    summary = summarize(per_example, ["slow_good", "fast_good", "fastest_bad", "overlap_bad"])
    assert summary["choice"] == "fast_good"
    assert [n for n, r in summary["table"].items() if r["meets"]] == ["slow_good", "fast_good"]
    assert summarize([{"solvers": {"x": example(0.5, 0.1, 0.1, 1.0)}}], ["x"])["choice"] is None
