"""Correction and augmentation runs end to end on the tiny workspace: through the worker, stored once,
saved as a model version (the base model's files hashed before and after), activated and compared;
the same seed reproduces the stored curve; a cancelled run stores nothing; bad settings are one line."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import pytest
from test_bad_input import run_cli, workspace_digest

from fastif_core import jobs
from fastif_core.apps.correct.config import ActivateParams, CorrectConfig
from fastif_core.apps.correct.job import run_correction
from fastif_core.apps.correct.pool import load_pool
from fastif_core.apps.correct.summary import markdown_table, merge_runs
from fastif_core.config import STestConfig
from fastif_core.store import Store
from fastif_core.worker.loop import run_worker
from fastif_core.workspace import versions
from fastif_core.workspace.layout import LoadedWorkspace, read_manifest

FAST = dict(
    anchors=2,
    iterations=2,
    seeds=1,
    k=12,
    top=3,
    lr=0.05,
    max_eval=6,
    s_test=STestConfig.default(depth=2, batch_size=8),
)


def _job(ws, job_id):
    with Store.open(ws) as store:
        return store.get_job(job_id)


def test_correction_through_the_worker_saves_a_version_and_leaves_the_base_untouched(tiny_workspace):
    ws = tiny_workspace
    base_hash = versions.checkpoint_hash(ws / "models" / "1")
    cfg = CorrectConfig(**FAST, methods=("helpful", "harmful", "random", "anchors"), save="helpful")
    with Store.open(ws) as store:
        queued = jobs.enqueue(store, "correct", cfg)
    assert run_worker(ws, "cpu:1", once=True, poll=0.1) == 1
    done = _job(ws, queued.id)
    assert done.status == "done", done.error
    with Store.open(ws) as store:
        run = store.get_app_result("correction", done.result["correction_id"])
        saved = store.get_model(done.result["saved_model_id"])
        train_ids = set(store.train_ids(1))
    result = run.result
    assert set(result["methods"]) == {"helpful", "harmful", "random", "anchors"}
    parts = set(result["before"])
    assert {"heldout", result["target"]} <= parts and len(parts) == 4  # three heuristics + held-out
    for method, m in result["methods"].items():
        (seed,) = m["seeds"]
        assert len(seed["curve"]) == 2 and set(seed["curve"][-1]) == parts
        assert all(set(p) <= train_ids and len(p) == (0 if method == "anchors" else 3) for p in seed["picks"])
        assert (
            m["summary"][result["target"]]["accuracy"]["mean"][0]
            == result["before"][result["target"]]["accuracy"]
        )
    assert saved.lineage["parent_model_id"] == 1 and saved.lineage["method"] == "correction:helpful"
    assert saved.lineage["picks"] == result["methods"]["helpful"]["seeds"][0]["picks"]
    assert (ws / "models" / str(saved.id) / "lineage.json").is_file()
    assert versions.checkpoint_hash(ws / "models" / "1") == base_hash

    again = run_correction(ws, cfg)  # the same seed: the helpful loop is re-run and must reproduce the curve
    assert again["saved"]["reproduced"] is True and again["saved"]["model_id"] == saved.id
    assert run_correction(ws, replace(cfg, save=None))["cached"] is True

    with Store.open(ws) as store:
        jobs.enqueue(store, "activate_model", ActivateParams(model_id=saved.id))
    assert run_worker(ws, "cpu:1", once=True, poll=0.1) == 1
    assert read_manifest(ws)["model_id"] == saved.id
    loaded = LoadedWorkspace.load(ws)
    assert loaded.model_id == saved.id and len(loaded.train_ids) == len(train_ids)
    after = result["methods"]["helpful"]["seeds"][0]["curve"][-1][result["target"]]
    manifest_acc = read_manifest(ws)["accuracy"]["demo-hans/challenge"]["slices"]["heuristic"]
    assert set(manifest_acc) == {"constituent", "lexical_overlap", "subsequence"} and after["n"] >= 1
    cmp = versions.compare(ws, 1, saved.id)
    assert {r["value"] for r in cmp["slices"]["heuristic"]} == {
        "constituent",
        "lexical_overlap",
        "subsequence",
    }
    assert cmp["changed"] == len(cmp["examples"]) and all(e["a"] != e["b"] for e in cmp["examples"])
    versions.activate(ws, 1)
    assert read_manifest(ws)["model_id"] == 1 and versions.checkpoint_hash(ws / "models" / "1") == base_hash


def test_augmentation_pool_gets_its_own_features_and_index_once(tiny_workspace):
    cfg = CorrectConfig(**{**FAST, "iterations": 1}, methods=("helpful", "random"), pool="demo:augment")
    out = run_correction(tiny_workspace, cfg)
    assert out["kind"] == "augment" and out["pool"]["built"] is True and out["pool"]["size"] == 300
    picks = [p for m in out["methods"].values() for p in m["seeds"][0]["picks"][0]]
    assert len(picks) == 6 and all(p.startswith("demo:augment:") for p in picks)
    loaded = LoadedWorkspace.load(tiny_workspace)
    pool = load_pool(loaded, "demo:augment")
    assert pool.built is False and pool.directory == out["pool"]["directory"] and pool.index.ntotal == 300


def test_a_pool_sample_keeps_each_subcase_share_and_is_the_same_for_every_seed(tiny_workspace):
    from collections import Counter

    from fastif_core.data.loaders import load_source

    full = load_source("demo:augment").examples
    cfg = CorrectConfig(**{**FAST, "iterations": 1}, methods=("random",), pool="demo:augment", pool_size=30)
    out = run_correction(tiny_workspace, cfg)
    assert out["pool"]["size"] == 30 and out["pool"]["built"] is True and out["settings"]["pool_size"] == 30
    loaded = LoadedWorkspace.load(tiny_workspace)
    pool = load_pool(loaded, "demo:augment", size=30)
    assert pool.built is False and pool.directory == out["pool"]["directory"]  # seed 1 reads the same sample
    by_id = {ex.id: ex for ex in full}
    assert len(set(pool.ids)) == 30 and set(pool.ids) <= set(by_id)
    share = Counter(by_id[i].slices.get("subcase") for i in pool.ids)
    source = Counter(ex.slices.get("subcase") for ex in full)
    assert all(abs(share[s] - 30 * n / len(full)) < 1 for s, n in source.items())  # largest remainder


def test_pool_size_leaves_the_keys_of_runs_stored_before_it_existed():
    # result_key of these two settings as computed by fastif 6cf97e4, before pool_size existed: runs
    # stored then must still answer the same request from the store
    assert CorrectConfig().result_key() == "26f2c19e73c98973"
    old = CorrectConfig(pool="demo:augment", max_eval=200, seeds=1, split_seed=0)
    assert old.result_key() == "ea93419532e06f0f"
    assert replace(old, pool_size=300).result_key() != old.result_key()


def test_cancelled_run_stores_nothing(tiny_workspace):
    ws = tiny_workspace
    cfg = CorrectConfig(
        **{**FAST, "iterations": 8, "s_test": STestConfig.default(depth=30, batch_size=16, tolerance=0.0)},
        methods=("helpful",),
    )
    with Store.open(ws) as store:
        queued = jobs.enqueue(store, "correct", cfg)
    stop = threading.Event()
    thread = threading.Thread(
        target=run_worker,
        args=(ws, "cpu:1"),
        daemon=True,
        kwargs={"poll": 0.1, "lease_seconds": 2.0, "stop_event": stop},
    )
    thread.start()
    try:
        end = time.monotonic() + 300
        while _job(ws, queued.id).progress <= 0.0 and time.monotonic() < end:
            time.sleep(0.2)
        with Store.open(ws) as store:
            store.cancel_job(queued.id)
        while not _job(ws, queued.id).finished and time.monotonic() < end:
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(120)
    assert _job(ws, queued.id).status == "cancelled"
    with Store.open(ws) as store:
        assert store.list_app_results("correction") == [] and len(store.list_models()) == 1


def test_one_seed_alone_with_the_first_split_reproduces_that_seed_of_a_multi_seed_run(tiny_workspace):
    # seeds can be run separately (one per machine or session) and merged: split_seed keeps the split
    cfg = CorrectConfig(**{**FAST, "iterations": 1, "seeds": 2}, methods=("helpful", "random"))
    both = run_correction(tiny_workspace, cfg)
    alone = run_correction(tiny_workspace, replace(cfg, seed=1, seeds=1, split_seed=0))
    assert alone["cached"] is False and alone["sizes"] == both["sizes"] and alone["before"] == both["before"]
    for method in ("helpful", "random"):
        (second,) = [r for r in both["methods"][method]["seeds"] if r["seed"] == 1]
        (only,) = alone["methods"][method]["seeds"]
        assert only["seed"] == 1 and only["picks"] == second["picks"] and only["anchors"] == second["anchors"]
        for mine, theirs in zip(only["curve"], second["curve"], strict=True):
            assert mine.keys() == theirs.keys()
            assert all(mine[p] == pytest.approx(theirs[p], rel=1e-9) for p in mine)
    assert run_correction(tiny_workspace, replace(cfg, split_seed=0))["cached"] is True  # None means seed


def test_stored_single_seed_runs_merge_into_the_multi_seed_comparison(tiny_workspace, capsys):
    cfg = CorrectConfig(**{**FAST, "iterations": 1, "seeds": 2}, methods=("helpful", "random"))
    singles = [run_correction(tiny_workspace, replace(cfg, seed=s, seeds=1, split_seed=0)) for s in (1, 0)]
    (merged,) = merge_runs([(r["run_id"], r) for r in singles])
    both = run_correction(tiny_workspace, cfg)  # computed after the singles: nothing is shared
    assert (
        both["cached"] is False
        and merged["seed_list"] == [0, 1]
        and merged["run_ids"] == sorted(r["run_id"] for r in singles)
    )
    assert merged["before"] == both["before"] and merged["settings"]["seeds"] == 2
    for method in ("helpful", "random"):
        for part, metrics in both["methods"][method]["summary"].items():
            for name, stats in metrics.items():
                for stat in ("mean", "min", "max"):
                    got = merged["methods"][method]["summary"][part][name][stat]
                    assert got == pytest.approx(stats[stat], rel=1e-9), (method, part, name, stat)
    # the CLI lists the three stored runs as one comparison; another split is another comparison
    run_correction(tiny_workspace, replace(cfg, seed=1, seeds=1, split_seed=1))
    code, out, err = run_cli(capsys, ["corrections", "-w", tiny_workspace, "--json"])
    assert code == 0, err
    listed = json.loads(out)
    assert sorted(len(m["run_ids"]) for m in listed) == [1, 3]
    (three,) = [m for m in listed if len(m["run_ids"]) == 3]
    assert three["seed_list"] == [0, 1] and three["methods"] == json.loads(json.dumps(merged["methods"]))
    code, out, _ = run_cli(capsys, ["corrections", "-w", tiny_workspace, "--kind", "augment"])
    assert code == 0 and "no stored correction runs match" in out


def test_a_seed_run_in_another_workspace_imports_by_model_hash_and_merges(
    tiny_workspace, tiny_workspace_template, tmp_path, capsys
):
    """Seed 1 runs in a second copy of the prepared workspace (another machine with the same prepare),
    seed 0 here; `fastif corrections --import` stores the other run under this workspace's model and
    lists both as one comparison. Bad files store nothing and are one line naming the file and field."""
    import shutil

    other = shutil.copytree(tiny_workspace_template, tmp_path / "other")
    common = [
        "--anchors",
        "2",
        "--iterations",
        "1",
        "--k",
        "12",
        "--top",
        "3",
        "--lr",
        "0.05",
        "--max-eval",
        "6",
        "--depth",
        "2",
        "--batch-size",
        "8",
        "--methods",
        "helpful,random",
        "--seeds",
        "1",
        "--split-seed",
        "0",
        "--device",
        "cpu",
        "--json",
    ]
    runs = {}
    for ws, seed in ((other, 1), (tiny_workspace, 0)):
        code, out, err = run_cli(capsys, ["correct", "-w", str(ws), "--seed", str(seed), *common])
        assert code == 0, err
        runs[seed] = json.loads(out)
    exported = tmp_path / "seed1.json"  # as a workspace that numbered its models differently wrote it
    exported.write_text(json.dumps({**runs[1], "model_id": runs[1]["model_id"] + 6}))
    local_model = runs[0]["model_id"]
    assert runs[1]["model_hash"] == runs[0]["model_hash"]

    bad_json = tmp_path / "cut.json"
    bad_json.write_text(json.dumps(runs[1])[:-40])
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({**runs[1], "model_hash": "0" * 64}))
    no_before = tmp_path / "no_before.json"
    no_before.write_text(json.dumps({k: v for k, v in runs[1].items() if k != "before"}))
    before = workspace_digest(tiny_workspace)
    for bad, needle in ((bad_json, "not JSON"), (foreign, "field 'model_hash'"), (no_before, "'before'")):
        code, out, err = run_cli(
            capsys, ["corrections", "-w", str(tiny_workspace), "--import", str(exported), str(bad)]
        )
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
        assert str(bad) in err and needle in err, err
    assert workspace_digest(tiny_workspace) == before  # the good file before the bad one is not stored either

    code, out, err = run_cli(
        capsys, ["corrections", "-w", str(tiny_workspace), "--import", str(exported), "--json"]
    )
    assert code == 0 and f"{exported}: imported as run" in err, err
    (merged,) = json.loads(out)
    assert merged["seed_list"] == [0, 1] and merged["model_id"] == local_model
    assert merged["run_ids"][0] == runs[0]["run_id"]
    for method in ("helpful", "random"):
        mine = {int(s["seed"]): s for s in merged["methods"][method]["seeds"]}
        assert (
            mine[1] == runs[1]["methods"][method]["seeds"][0]
            and mine[0] == runs[0]["methods"][method]["seeds"][0]
        )
    code, out, err = run_cli(
        capsys, ["corrections", "-w", str(tiny_workspace), "--import", str(exported), "--markdown"]
    )
    assert code == 0 and "already stored as run" in out, err
    assert markdown_table(merged) in out and "| helpful | " in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--slice", "heuristic=no_such_heuristic"], "slice='heuristic=no_such_heuristic' matches 0"),
        (["--anchors", "50"], "anchors=50 is larger than the anchor pool"),
        (["--iterations", "0"], "--iterations: invalid value '0': allowed an integer >= 1"),
        (["--methods", "helpful,best"], "methods='helpful,best' is invalid: allowed helpful, harmful"),
        (["--slice", "colour=red"], "slice='colour=red' is invalid"),
        (["--save", "random", "--methods", "helpful"], "save='random' is invalid"),
        (["--pool-size", "30"], "pool_size=30 is invalid: allowed an integer >= 1, with a pool other than"),
        (["--pool", "demo:augment", "--pool-size", "0"], "--pool-size: invalid value '0'"),
    ],
)
def test_bad_settings_are_one_line_before_any_work(tiny_workspace_template, capsys, args, needle):
    before = workspace_digest(tiny_workspace_template)
    code, out, err = run_cli(capsys, ["correct", "-w", tiny_workspace_template, "--device", "cpu", *args])
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and needle in err, err
    assert workspace_digest(tiny_workspace_template) == before
