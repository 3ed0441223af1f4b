"""``fastif bench`` (fastif_core.benchmarks): the quick bench on the tiny prepared workspace, checked for
structure and invariants against ground truth recomputed here (no timing assertions)."""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from fastif_core.benchmarks import add_arguments, config_from_args, format_summary, run_bench
from fastif_core.benchmarks.common import BenchConfig, _balanced
from fastif_core.benchmarks.lissa_grid import grid_points
from fastif_core.benchmarks.quality import correlations, recall_curves, top_sets
from fastif_core.queries.influence import cache_key
from fastif_core.store import Store
from fastif_core.workspace.layout import LoadedWorkspace

QUICK = BenchConfig(test_examples=2, quick=True, ks=(10, 100))


@pytest.fixture(scope="module")
def bench(tiny_workspace_template: Path, tmp_path_factory) -> tuple[Path, Path, dict]:
    """One quick bench run on a private copy of the tiny workspace: (workspace, out dir, result)."""
    root = tmp_path_factory.mktemp("bench") / "ws"
    shutil.copytree(tiny_workspace_template, root)
    out = root.parent / "out"
    seen: list[float] = []
    result = run_bench(root, out, config=QUICK, progress=lambda f, m: seen.append(f))
    assert seen and min(seen) >= 0.0 and max(seen) == 1.0
    return root, out, result


def _all_numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _all_numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _all_numbers(v)
    elif isinstance(obj, float):
        yield obj


def test_bench_json_is_written_and_stored(bench):
    root, out, result = bench
    on_disk = json.loads((out / "bench.json").read_text())
    assert on_disk == {k: v for k, v in result.items() if k != "bench_id"}
    assert all(math.isfinite(x) for x in _all_numbers(on_disk))
    with Store.open(root) as store:
        latest = store.latest_bench()
    assert latest is not None and latest.id == result["bench_id"] and latest.kind == "quick"
    assert latest.result["num_train"] == result["num_train"] == 60
    for name in result["plots"]["html"]:
        assert (out / name).stat().st_size > 0
    assert {
        f"{s}.html" for s in ("speed", "latency", "quality", "recall", "lissa_tradeoff", "retrain", "engine")
    } <= set(result["plots"]["html"])
    assert all((out / name).exists() for name in result["plots"]["png"])
    assert result["plots"]["png"] or result["plots"]["png_error"]
    assert "Speed (Table 1)" in format_summary(result)


def test_test_examples_are_balanced_non_training_and_settings_recorded(bench):
    root, _, result = bench
    examples = result["test_examples"]
    assert sorted(e["correct"] for e in examples) == [False, True]
    loaded_ids = set(LoadedWorkspace.load(root).train_ids)
    assert not {e["id"] for e in examples} & loaded_ids
    s = result["settings"]
    assert s["ks_used"] == [10, 60] and s["scaled_down"] is True
    assert (
        s["presets"]["original"]["batch_size"] == s["original_batch"]
        and s["presets"]["fast"]["batch_size"] == 1
    )


def _test_examples(root: Path, result: dict):
    """The bench's test examples (one-row batches), chosen again as the bench chose them."""
    from fastif_core.benchmarks.common import choose_test_examples

    loaded, cfg = LoadedWorkspace.load(root), QUICK.resolved(on_gpu=False)
    with Store.open(root) as store:
        examples = choose_test_examples(store, loaded, cfg.test_examples, cfg.seed)
    assert [e.id for e in examples] == [e["id"] for e in result["test_examples"]]
    return loaded, cfg, examples


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


def s_test_cosines(root: Path, result: dict) -> dict[str, dict[str, float]]:
    """Mean over the test examples of cos(s_test, test gradient) and cos(s_test, the original s_test)."""
    from fastif_core.engine.influence import test_gradient
    from fastif_core.engine.solvers import solve

    loaded, cfg, examples = _test_examples(root, result)
    sums = {p: {"cos_with_gradient": 0.0, "cos_with_original": 0.0} for p in ("original", "fast")}
    for ex in examples:
        v = test_gradient(loaded.objective, ex.batch)
        s = {p: solve(loaded.objective, v, loaded.train, cfg.preset(p)).s_test for p in sums}
        for p in sums:
            sums[p]["cos_with_gradient"] += _cos(s[p], v) / len(examples)
            sums[p]["cos_with_original"] += _cos(s[p], s["original"]) / len(examples)
    return sums


def test_speed_table_rows_and_speedups(bench):
    root, _, result = bench
    rows = result["speed"]["single"]["rows"]
    assert list(rows) == ["full", "knn10/original", "knn10/fast", "knn60/original", "knn60/fast"]
    for row in rows.values():
        assert row["seconds"]["n"] == 2
        assert row["seconds"]["min"] <= row["seconds"]["median"] <= row["seconds"]["max"]
        assert all(x > 0 for x in row["per_example"])
    assert rows["full"]["candidates"] == 60
    assert result["speed"]["multi"] is None  # cpu:1
    geometry = result["speed"]["single"]["s_test"]
    expected = s_test_cosines(root, result)  # recomputed here: the test gradient and both presets' s_test
    for preset in ("original", "fast"):
        for key in ("cos_with_gradient", "cos_with_original"):
            assert geometry[preset][key]["n"] == 2
            # at the quick bench's depth 4 every cosine is within ~1e-8 of 1, so the deviation from 1 is what
            # is compared; float32 rounding of the re-solved s_test moves it by ~1e-11 at most (δ·sin θ)
            got, want = 1 - geometry[preset][key]["mean"], 1 - expected[preset][key]
            assert got == pytest.approx(want, rel=5e-2, abs=1e-11), (preset, key)
    assert 1 - expected["fast"]["cos_with_original"] > 1e-10  # another vector than the original s_test
    assert result["engine"]["scoring"]["agreement"]["rel_err"] < 1e-4  # the timed JVP scores are right


def stored_values(root: Path, loaded, example_id: str, preset: str, k: int | None) -> dict[int, float]:
    """Training position -> influence of the run the bench stored for ``example_id`` (full or fast kNN)."""
    icfg = QUICK.resolved(on_gpu=False).influence(preset, k)
    with Store.open(root) as store:
        found = store.find_influence_run(loaded.model_id, example_id, cache_key(icfg))
        assert found is not None, (example_id, preset, k)
        run = store.get_influence_run(found.id, with_text=False)
    position = {tid: p for p, tid in enumerate(loaded.train_ids)}
    return {position[s.train_id]: s.value for s in run.scores}


def test_quality_rows_equal_scipy_on_the_stored_runs(bench):
    """Table 3 recomputed with scipy from the stored full run and the stored fast kNN run, on the k nearest."""
    from scipy import stats

    root, _, result = bench
    loaded = LoadedWorkspace.load(root)
    ks, rows = result["settings"]["ks_used"], result["quality"]["rows"]
    for i, ex in enumerate(result["test_examples"]):
        full = stored_values(root, loaded, ex["id"], "original", None)
        fast = stored_values(root, loaded, ex["id"], "fast", max(ks))
        assert len(full) == result["num_train"]
        for k in ks:
            nn = loaded.nearest(ex["id"], k)[0]
            x, y = [fast[p] for p in nn], [full[p] for p in nn]
            expected = {
                "pearson": stats.pearsonr(x, y).statistic,
                "spearman": stats.spearmanr(x, y).statistic,
                "kendall": stats.kendalltau(x, y).statistic,
            }
            got = rows[f"knn{k}/fast"]["per_example"][i]
            if k == max(ks):  # the stored fast run holds exactly the values the bench correlated
                assert got == pytest.approx(expected, abs=1e-9), (ex["id"], k)
            else:  # scored afresh in other batches: float noise may reorder near-ties (rank metrics)
                assert got["pearson"] == pytest.approx(expected["pearson"], abs=1e-4), (ex["id"], k)
            # the 'original' rows score the k nearest with full's s_test: the kNN path equals the full path
            assert rows[f"knn{k}/original"]["per_example"][i]["pearson"] == pytest.approx(1.0, abs=1e-5)
    for k in ks:
        per = rows[f"knn{k}/fast"]["per_example"]
        for metric in ("pearson", "spearman", "kendall"):
            mean = rows[f"knn{k}/fast"]["by_group"]["all"][metric]["mean"]
            assert mean == pytest.approx(sum(p[metric] for p in per) / len(per))


def test_recall_equals_a_brute_force_count_on_the_stored_full_runs(bench):
    """R@m(k) for every k < N (and N), m and kind, recomputed from each stored full run and the index."""
    root, _, result = bench
    rec, loaded = result["recall"], LoadedWorkspace.load(root)
    n = rec["num_train"]
    assert rec["ks"][-1] == n and rec["random"] == [k / n for k in rec["ks"]]
    assert [k for k in rec["ks"] if k < n], "no k below N: the recall check would be trivial"
    curves: dict = {}
    for ex in result["test_examples"]:
        full = stored_values(root, loaded, ex["id"], "original", None)
        order = sorted(full, key=lambda p: full[p])  # most helpful (most negative) first
        tops = {
            "helpful": order,
            "harmful": sorted(full, key=lambda p: -full[p]),
            "unsigned": sorted(full, key=lambda p: -abs(full[p])),
        }
        group = "correct" if ex["correct"] else "incorrect"
        for m in rec["ms"]:
            for kind, ranked in tops.items():
                top = set(ranked[:m])
                curve = [len(top & set(loaded.nearest(ex["id"], k)[0])) / m for k in rec["ks"]]
                curves.setdefault((group, str(m), kind), []).append(curve)
    for (group, m, kind), per_example in curves.items():
        expected = [sum(c[j] for c in per_example) / len(per_example) for j in range(len(rec["ks"]))]
        assert rec["by_group"][group][m][kind] == pytest.approx(expected), (group, m, kind)


def test_lissa_tradeoff_reference_has_zero_error(bench):
    root, _, result = bench
    grid = result["lissa_tradeoff"]
    s = result["settings"]
    assert len(grid["points"]) == len(grid_points(s["grid_depths"], s["grid_batches"], s["grid_repeats"]))
    costliest = max(
        (
            (j, b, t)
            for j in s["grid_depths"]
            for b in s["grid_batches"]
            for t in s["grid_repeats"]
            if t == 1 or (b == 1 and j == max(s["grid_depths"]))
        ),
        key=lambda p: p[0] * p[1] * p[2],
    )
    assert tuple(grid["reference"].values()) == costliest  # the most expensive point of the grid
    ref = grid["points"][0]
    assert (ref["depth"], ref["batch_size"], ref["repeats"]) == costliest
    assert all(p["seconds"] > 0 for p in grid["points"])
    # every point's error and correlation recomputed here from its own solve and the reference's
    from scipy import stats

    from fastif_core.config import STestConfig
    from fastif_core.engine.influence import test_gradient
    from fastif_core.engine.scoring import score_candidates
    from fastif_core.engine.solvers import solve

    loaded, cfg, examples = _test_examples(root, result)
    (ex,) = [e for e in examples if e.id == grid["example_id"]]
    obj, train = loaded.objective, loaded.train
    v = test_gradient(obj, ex.batch)
    candidates = loaded.nearest(ex.id, min(100, len(train)))[0]
    solved = {
        (p["depth"], p["batch_size"], p["repeats"]): solve(
            obj,
            v,
            train,
            STestConfig(depth=p["depth"], batch_size=p["batch_size"], repeats=p["repeats"], seed=cfg.seed),
        ).s_test
        for p in grid["points"]
    }
    s_ref = solved[costliest].double()
    ref_scores = score_candidates(obj, solved[costliest], train, candidates, cfg.score_batch_size).double()
    for p in grid["points"]:
        s_p = solved[(p["depth"], p["batch_size"], p["repeats"])]
        error = float((s_p.double() - s_ref).norm() / s_ref.norm())
        scores = score_candidates(obj, s_p, train, candidates, cfg.score_batch_size).double()
        # float32 solves redone in this process: equal up to summation order
        assert p["error_norm"] == pytest.approx(error, rel=1e-3, abs=1e-6), p
        assert p["influence_pearson"] == pytest.approx(stats.pearsonr(scores, ref_scores)[0], abs=1e-5), p
    assert ref["error_norm"] == 0.0  # the reference against itself: exactly zero by construction
    assert max(p["error_norm"] for p in grid["points"]) > 1e-3  # the other points really differ from it


def test_convex_retraining_matches_influence(bench):
    """Exact influence on the convex model predicts leave-one-out retraining, with the paper's signs."""
    _, _, result = bench
    convex = result["retrain"]["convex"]
    assert convex["max_final_grad_norm"] < 1e-6
    assert convex["signs_at_max_m"]["harmful_lowers_loss"] and convex["signs_at_max_m"]["helpful_raises_loss"]
    for p in convex["points"]:
        if p["m"] == 1:
            assert p["predicted"] == pytest.approx(p["actual"], rel=0.25, abs=1e-6), p
    assert convex["pearson_predicted_vs_actual"] > 0.5
    assert result["retrain"]["transformer"] is None


def test_balanced_choice_tops_up_from_the_other_pool():
    import random

    pools = {True: list(range(10)), False: ["x"]}
    rows = _balanced(pools, 4, random.Random(0))
    assert len(rows) == 4 and rows.count("x") == 1
    assert _balanced(pools, 4, random.Random(0)) == rows  # deterministic


def test_recall_curves_and_correlations_on_known_values():
    from fastif_core.benchmarks.common import TestExample
    from fastif_core.benchmarks.speed import ExampleData

    values = torch.tensor([-5.0, 4.0, -3.0, 2.0, -1.0, 0.5])  # helpful: 0, 2, 4; harmful: 1, 3, 5
    assert top_sets(values, 2) == {"helpful": {0, 2}, "harmful": {1, 3}, "unsigned": {0, 1}}
    ex = TestExample("t", None, {}, True)
    data = [ExampleData(ex, values, {}, {})]
    rec = recall_curves(data, [[0, 1, 2, 3, 4, 5]], [1, 2, 6], [2])
    assert rec["by_group"]["correct"]["2"] == {
        "helpful": [0.5, 0.5, 1.0],
        "harmful": [0.0, 0.5, 1.0],
        "unsigned": [0.5, 1.0, 1.0],
    }
    assert rec["by_group"]["incorrect"]["2"]["helpful"] == []
    r = correlations(values, 2 * values + 1)
    assert r == pytest.approx({"pearson": 1.0, "spearman": 1.0, "kendall": 1.0})
    assert correlations(values, torch.ones(6))["pearson"] is None


def test_cli_arguments_build_the_config(tmp_path):
    from fastif_core.cli.options import add_workspace_argument

    p = argparse.ArgumentParser()
    add_workspace_argument(p)  # as `fastif bench` builds it
    add_arguments(p)
    a = p.parse_args(
        [
            "--workspace",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--quick",
            "--ks",
            "5,50",
            "--depth",
            "7",
            "--click-preset",
            "scaled",
        ]
    )
    cfg = config_from_args(a)
    assert cfg.quick and cfg.ks == (5, 50) and cfg.depth == 7 and cfg.latency_default_preset is False
    assert cfg.resolved(on_gpu=False).depth == 7 and cfg.resolved(on_gpu=False).original_batch == 4
    with pytest.raises(SystemExit):
        p.parse_args(["--out", "o", "--ks", "a,b"])


@pytest.mark.slow
def test_multi_device_rows_and_transformer_retraining(tiny_workspace: Path):
    """cpu:2 Table 1 rows through the device group, and the transformer retraining check (one removal)."""
    from fastif_core.benchmarks import retrain, speed
    from fastif_core.benchmarks.common import choose_test_examples

    loaded = LoadedWorkspace.load(tiny_workspace)
    cfg = BenchConfig(quick=True, devices="cpu:2", ks=(10,), retrain_ms=(1,), retrain_examples=1)
    cfg = cfg.resolved(on_gpu=False)
    with Store.open(tiny_workspace) as store:
        examples = choose_test_examples(store, loaded, 1, 0)
    multi = speed.multi_device(loaded, examples, cfg, [10], lambda f, m: None)
    assert multi["world_size"] == 2 and list(multi["rows"]) == ["full", "knn10/original", "knn10/fast"]
    assert all(r["speedup_vs_full"] > 0 for r in multi["rows"].values())
    full = speed.measure_example(loaded, examples[0], cfg, [10]).full
    out = retrain.transformer_check(loaded, examples, [full], cfg, lambda f, m: None)
    assert out["fine_tunings"] == 4 and len(out["points"]) == 3
    assert all(math.isfinite(p["actual"]) and math.isfinite(p["predicted"]) for p in out["points"])


def _bench_page(workspace: Path, monkeypatch: pytest.MonkeyPatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    repo = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("FASTIF_WORKSPACE", str(workspace))
    monkeypatch.setenv("FASTIF_AUTOSTART_WORKER", "0")
    monkeypatch.syspath_prepend(str(repo))
    st.cache_data.clear()
    st.cache_resource.clear()
    at = AppTest.from_file(str(repo / "app" / "dashboard.py"), default_timeout=60)
    at.run()
    at.switch_page("views/bench.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_dashboard_bench_page_shows_the_latest_result(bench, monkeypatch):
    root, _, result = bench
    at = _bench_page(root, monkeypatch)
    assert at.title[0].value == "Bench"
    speed = at.dataframe[0].value
    assert list(speed["row"]) == list(result["speed"]["single"]["rows"])
    assert speed["speed-up"].tolist() == pytest.approx(
        [r["speedup_vs_full"] for r in result["speed"]["single"]["rows"].values()]
    )
    assert len(at.get("plotly_chart")) == 7
    assert f"Bench #{result['bench_id']}" in at.caption[0].value


def test_dashboard_bench_page_without_a_result_says_how_to_run_one(tiny_workspace, monkeypatch):
    at = _bench_page(tiny_workspace, monkeypatch)
    assert "fastif bench" in at.info[0].value


def test_untimed_examples_reuse_the_stored_runs_with_the_fresh_values(bench):
    """An example beyond ``timed_examples`` takes its values from the runs the bench stored, unchanged."""
    from fastif_core.benchmarks import speed
    from fastif_core.benchmarks.common import choose_test_examples

    root, _, result = bench
    loaded = LoadedWorkspace.load(root)
    cfg = QUICK.resolved(on_gpu=False)
    ks = result["settings"]["ks_used"]
    with Store.open(root) as store:
        ex = choose_test_examples(store, loaded, cfg.test_examples, cfg.seed)[0]
        cached = speed.stored_or_computed(loaded, store, ex, cfg, ks)
    fresh = speed.measure_example(loaded, ex, cfg, ks)
    assert cached.seconds is None and fresh.seconds is not None
    torch.testing.assert_close(cached.full, fresh.full.double(), rtol=1e-5, atol=1e-7)
    for k in ks:
        assert cached.knn[k] == fresh.knn[k]
        torch.testing.assert_close(
            cached.scores["fast"][k], fresh.scores["fast"][k].double(), rtol=1e-5, atol=1e-7
        )


def test_non_finite_values_are_written_as_null_and_listed(tmp_path: Path):
    """One infinite rel_std must not lose the run: bench.json stays strict JSON, the value becomes null
    and ``non_finite`` names where it was."""
    from fastif_core.benchmarks.suite import write_bench_json

    result = {
        "lissa_tradeoff": {"points": [{"rel_std": math.inf, "seconds": 1.5}, {"rel_std": math.nan}]},
        "speed": (1.0, -math.inf),
    }
    written = write_bench_json(tmp_path, result, complete=True)
    on_disk = json.loads((tmp_path / "bench.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert on_disk == written and on_disk["complete"] is True
    assert on_disk["lissa_tradeoff"]["points"] == [{"rel_std": None, "seconds": 1.5}, {"rel_std": None}]
    assert on_disk["speed"] == [1.0, None]
    assert on_disk["non_finite"] == [
        {"path": "lissa_tradeoff.points.0.rel_std", "value": "inf"},
        {"path": "lissa_tradeoff.points.1.rel_std", "value": "nan"},
        {"path": "speed.1", "value": "-inf"},
    ]


def test_an_interrupted_bench_keeps_the_sections_already_done(tiny_workspace: Path, tmp_path: Path):
    """Stopped during the s_test grid (Ctrl-C in a long run): bench.json holds every earlier section."""
    from fastif_core.benchmarks.suite import _stage_ranges

    grid_start = _stage_ranges()["grid"][0]

    def progress(fraction: float, message: str) -> None:
        if fraction > grid_start + 1e-6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_bench(tiny_workspace, tmp_path / "out", config=QUICK, progress=progress)
    partial = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert partial["complete"] is False
    assert {"settings", "engine", "test_examples", "speed", "latency", "quality", "recall"} <= set(partial)
    assert "lissa_tradeoff" not in partial and "retrain" not in partial
    assert partial["num_train"] == 60 and set(partial["speed"]["single"]["rows"]) >= {"full"}
