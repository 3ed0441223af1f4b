"""Sketch indexes in a real tiny workspace (:mod:`fastif_core.workspace.sketches`, :mod:`fastif_core.queries.sketch`):
the stored rows equal the engine's sketches; a build killed mid-way (a real subprocess, SIGKILL) and resumed
equals an uninterrupted build; an index refuses another model, checkpoint, training set or settings;
``fastif influence --method sketch`` has the exact path's JSON shape over all N, and at full dimension on
the exact path's seeded batch it reproduces ``--full --preset gauss_newton_direct``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fastif_core.config import InfluenceConfig, SketchConfig, SketchQueryConfig, STestConfig
from fastif_core.engine.sketch import sketch_gradients
from fastif_core.errors import WorkspaceError
from fastif_core.queries.influence import influence_query
from fastif_core.queries.sketch import influence_sketch_query
from fastif_core.workspace.layout import LoadedWorkspace
from fastif_core.workspace.sketches import (
    build_sketches,
    index_dir,
    index_key,
    make_sketch_for,
    open_index,
    require_index,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = "demo-hans:challenge:ex0"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _worker_once(ws: Path, devices: str) -> subprocess.CompletedProcess:
    """``fastif worker --once`` (a real process) on ``ws``: runs the queued jobs, then exits 0."""
    cli = [sys.executable, "-m", "fastif_core", "worker", "-w", str(ws), "--once", "--devices", devices]
    run = subprocess.run(cli, env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return run


def test_stored_sketches_equal_the_engine(tiny_workspace):
    loaded = LoadedWorkspace.load(tiny_workspace, search=False)
    cfg = SketchConfig(dim=400, block=8, batch_size=4)
    index = build_sketches(loaded, cfg)
    assert index.complete and index.describe()["blocks"] == {"done": 8, "total": 8}
    sketch = make_sketch_for(loaded.objective, index.key)
    want = torch.cat(
        [sketch_gradients(loaded.objective, sketch, loaded.train.collate([i])) for i in range(8)]
    )
    # float32 model; stored rows were computed in padded batches of 4, the reference one example at a time
    torch.testing.assert_close(torch.from_numpy(np.array(index.sketches()[:8])), want, rtol=1e-4, atol=1e-6)
    assert build_sketches(loaded, cfg).path == index.path  # complete: reused, nothing recomputed


def test_build_killed_mid_way_resumes_to_the_uninterrupted_result(tiny_workspace, tmp_path):
    other = tmp_path / "uninterrupted"
    shutil.copytree(tiny_workspace, other)
    args = ["--dim", "300", "--block", "1", "--batch-size", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastif_core", "sketch", "-w", str(tiny_workspace), *args],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    markers = tiny_workspace / "sketches" / "1"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(markers.glob("*/blocks/*"))
        if len(found) >= 5:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the build finished before it could be killed"
    loaded = LoadedWorkspace.load(tiny_workspace, search=False)
    cfg = SketchConfig(dim=300, block=1, batch_size=1)
    partial = open_index(index_dir(tiny_workspace, index_key(loaded, cfg)), index_key(loaded, cfg))
    assert partial is not None and not partial.complete and 5 <= len(partial.blocks_done()) < 60
    resumed = build_sketches(loaded, cfg)
    fresh = build_sketches(LoadedWorkspace.load(other, search=False), cfg)
    assert resumed.complete and fresh.complete
    # the same examples in the same batches of one, in two processes: equal up to float32 rounding
    for read in ("sketches", "rows"):
        a, b = (torch.from_numpy(np.array(getattr(i, read)())) for i in (resumed, fresh))
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_an_index_refuses_another_model_training_set_or_settings(tiny_workspace):
    loaded = LoadedWorkspace.load(tiny_workspace, search=False)
    cfg = SketchConfig(dim=200, block=16)
    index = build_sketches(loaded, cfg)
    key = index.key
    for field, value, what in (
        ("model_id", 2, "model"),
        ("model_hash", "0" * 64, "checkpoint"),
        ("train_hash", "f" * 64, "training data"),
    ):
        with pytest.raises(WorkspaceError, match=f"another {what}"):
            open_index(index.path, {**key, field: value})
    changed = replace(loaded, train=loaded.train.subset(range(len(loaded.train))))
    changed.train.labels[0] = (int(changed.train.labels[0]) + 1) % 3  # one label differs
    assert index_key(changed, cfg)["train_hash"] != key["train_hash"]
    with pytest.raises(WorkspaceError, match="another training data"):
        open_index(index.path, index_key(changed, cfg))
    with pytest.raises(WorkspaceError, match="does not exist"):  # the changed data's own index is not built
        require_index(changed, cfg)
    with pytest.raises(WorkspaceError, match="another sketch settings"):
        open_index(
            index.path, index_key(loaded, replace(cfg, seed=1)) | {"settings": {**key["settings"], "seed": 1}}
        )


def test_influence_method_sketch_json_and_full_dimension_equals_the_exact_direct_solve(tiny_workspace):
    loaded = LoadedWorkspace.load(tiny_workspace, search=False)
    n, p = len(loaded.train), loaded.objective.num_params
    dims = ["--sketch-dim", str(10 * p), "--sketch-projection", "orthogonal", "--sketch-examples", "seeded"]
    built = build_sketches(loaded, SketchConfig(dim=10 * p, projection="orthogonal")).describe()
    assert built["dim"] == p and built["status"] == "complete"  # every factor square: Π invertible
    run = [
        sys.executable,
        "-m",
        "fastif_core",
        "influence",
        "-w",
        str(tiny_workspace),
        "--example",
        EXAMPLE,
        "--preset",
        "gauss_newton_direct",
        "--top",
        "0",
        "--json",
    ]
    sketch = json.loads(
        subprocess.run(
            [*run, "--method", "sketch", *dims], env=_env(), capture_output=True, check=True, text=True
        ).stdout
    )
    cfg = InfluenceConfig(s_test=STestConfig.gauss_newton_direct(), k=None, top=0)
    exact = influence_query(tiny_workspace, EXAMPLE, cfg, loaded=LoadedWorkspace.load(tiny_workspace))
    assert sketch["method"] == "sketch" and sketch["dimension"] == p and sketch["num_candidates"] == n
    assert sketch["sketch"]["model_id"] == exact["model_id"] and not sketch["cached"]
    assert set(sketch["seconds"]) >= {"test_gradient", "s_test", "scoring", "total"}
    assert set(exact) - {"warnings"} <= set(sketch)  # the exact path's shape, plus method/dimension/sketch
    values = [r["influence"] for r in sketch["helpful"]]
    assert values == sorted(values) and all(v < 0 for v in values)  # helpful: negative, most negative first

    def every(out):  # helpful (negative) and harmful (positive) rows with --top 0: every candidate
        return {r["train_id"]: r["influence"] for r in out["helpful"] + out["harmful"]}

    got, want = every(sketch), every(exact)
    assert len(got) == len(want) == n
    a, b = torch.tensor([got[i] for i in want]), torch.tensor(list(want.values()))
    # float32 model and float32 sketches against the exact direct solve of the same seeded batch of 64
    assert float((a - b).norm() / b.norm()) < 1e-3
    assert (torch.sign(a) == torch.sign(b)).float().mean() > 0.95 and (b < 0).any() and (b > 0).any()
    qcfg = SketchQueryConfig(SketchConfig(dim=10 * p, projection="orthogonal"), examples="seeded")
    again = influence_sketch_query(tiny_workspace, EXAMPLE, cfg, qcfg, loaded=loaded)
    assert again["cached"] and again["dimension"] == p and again["helpful"][0] == sketch["helpful"][0]


def test_method_sketch_without_an_index_says_how_to_build_it(tiny_workspace):
    with pytest.raises(WorkspaceError, match="fastif sketch --workspace"):
        influence_sketch_query(
            tiny_workspace,
            EXAMPLE,
            InfluenceConfig(s_test=STestConfig.default()),
            SketchQueryConfig(sketch=SketchConfig(dim=123)),
        )


def test_sketch_matrix_rows_equal_single_sketch_queries_and_resume_from_stored_blocks(tiny_workspace):
    from fastif_core.queries.sketch_matrix import sketch_matrix

    loaded = LoadedWorkspace.load(tiny_workspace, search=False)
    qcfg = SketchQueryConfig(SketchConfig(dim=300))
    build_sketches(loaded, qcfg.sketch)
    cfg = InfluenceConfig(s_test=STestConfig.default(), top=0)
    ids = ["demo-hans:challenge:ex0", "demo-hans:challenge:ex1", "demo-hans:challenge:ex2"]
    out = sketch_matrix(loaded, ids, cfg, qcfg, row_block=2, col_block=16)
    assert out.shape == (3, len(loaded.train)) and out.full and out.chunks["computed"] == out.chunks["total"]
    for row, example in enumerate(ids):
        single = influence_sketch_query(tiny_workspace, example, cfg, qcfg, loaded=loaded)
        by_id = {r["train_id"]: r["influence"] for r in single["helpful"] + single["harmful"]}
        want = torch.tensor([by_id[i] for i in out.train_ids], dtype=torch.float64)
        # M = 3 tests in blocks of 2 vs M = 1: the same sketches and solve, stored as float32
        torch.testing.assert_close(torch.from_numpy(out.values[row]).double(), want, rtol=1e-5, atol=1e-9)
    again = sketch_matrix(loaded, ids, cfg, qcfg, row_block=2, col_block=16)
    assert again.cached and again.matrix_id == out.matrix_id


def test_sketch_jobs_on_a_real_worker_build_then_click(tiny_workspace):
    """``fastif sketch --submit`` and ``fastif submit influence --method sketch`` queue a ``sketch`` and a
    ``sketch_click`` job, run by ``fastif worker --once`` (real processes): the index is built, the click
    stores the sketch list over all N and the exact re-rank of its top ``--rerank`` candidates ∪ kNN."""
    from fastif_core.store import Store

    def submit(*args: str) -> dict:
        cli = [sys.executable, "-m", "fastif_core", *args, "-w", str(tiny_workspace), "--json"]
        return json.loads(subprocess.run(cli, env=_env(), capture_output=True, check=True, text=True).stdout)

    build = submit("sketch", "--submit", "--dim", "300", "--block", "16")
    request = f"submit influence --example {EXAMPLE} --k 8 --method sketch --sketch-dim 300 --rerank 5"
    click = submit(*request.split())
    assert (build["kind"], click["kind"]) == ("sketch", "sketch_click")
    again = submit(*request.split())
    assert again["id"] == click["id"]  # the same request twice is one job
    run = _worker_once(tiny_workspace, "cpu:1")
    with Store.open(tiny_workspace) as store:
        done = {j.id: j for j in store.list_jobs(limit=10)}
        assert done[build["id"]].status == "done" and done[click["id"]].status == "done", run.stderr[-2000:]
        built = done[build["id"]].result  # the job also readied the default query: H⁻¹φ kept, factor freed
        assert "precondition" in built["curvature_seconds"]
        assert len(list(Path(built["path"]).glob("preconditioned-*[0-9a-f].npy"))) == 1
        out = done[click["id"]].result
        sketch_run = store.get_influence_run(out["sketch_run_id"], with_text=False)
        exact_run = store.get_influence_run(out["exact_run_id"], with_text=False)
    loaded = LoadedWorkspace.load(tiny_workspace)
    assert sketch_run.num_candidates == len(loaded.train) and sketch_run.config["method"] == "sketch"
    knn = {loaded.train_ids[i] for i in loaded.nearest(EXAMPLE, 8)[0]}
    rescored = {s.train_id for s in exact_run.helpful(None) + exact_run.harmful(None)}
    top = {s.train_id for s in sketch_run.helpful(5) + sketch_run.harmful(5)}
    assert (
        knn <= rescored
        and top <= rescored
        and exact_run.num_candidates == out["candidates"] == len(knn | top)
    )
    assert set(out["agreement"]) == {"pearson", "top10_helpful", "top10_harmful"}


def test_sketch_job_on_two_ranks_equals_a_serial_build(tiny_workspace, tmp_path):
    """A ``sketch`` job on a worker with ``--devices cpu:2``: each rank builds every other block into the same
    files; the index equals a serial build of a copy of the workspace."""
    from fastif_core import jobs
    from fastif_core.jobs import SketchParams
    from fastif_core.store import Store

    serial = tmp_path / "serial"
    shutil.copytree(tiny_workspace, serial)
    cfg = SketchConfig(dim=300, block=8, batch_size=4)
    with Store.open(tiny_workspace) as store:
        job = jobs.enqueue(store, "sketch", SketchParams(config=cfg, model_id=1))
    _worker_once(tiny_workspace, "cpu:2")
    with Store.open(tiny_workspace) as store:
        done = store.get_job(job.id)
    assert done.status == "done" and done.result["ranks"] == 2 and done.result["blocks_computed"] == 8
    two = build_sketches(
        LoadedWorkspace.load(tiny_workspace, search=False), cfg
    )  # complete: opened, not rebuilt
    one = build_sketches(LoadedWorkspace.load(serial, search=False), cfg)
    assert two.complete and two.meta["seconds"] == done.result["seconds"]
    for read in ("sketches", "rows"):
        a, b = (torch.from_numpy(np.array(getattr(i, read)())) for i in (two, one))
        # the same batches in different processes: equal up to float32 rounding
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_build_within_budget_defers_keeping_its_timed_block_then_finishes(tiny_workspace, tmp_path):
    """``fastif prepare``'s default: over budget, only the timed first block is built (and kept, with the
    estimate in meta.json); within budget the index is finished, and equals an uninterrupted build."""
    from fastif_core.workspace.sketches import build_within_budget, disk_estimate

    other = tmp_path / "uninterrupted"
    shutil.copytree(tiny_workspace, other)
    loaded = LoadedWorkspace.load(tiny_workspace, search=False)
    cfg = SketchConfig(dim=300, block=8, batch_size=4)
    out = build_within_budget(loaded, cfg, 0.0)
    assert out["status"] == "deferred" and out["blocks"] == {"done": 1, "total": 8}
    assert out["estimate_seconds"] > 0 and out["budget_seconds"] == 0.0
    assert json.loads((Path(out["path"]) / "meta.json").read_text())["estimate_seconds"] > 0
    again = build_within_budget(loaded, cfg, 0.0)  # the kept block is not recomputed: the next one is timed
    assert again["status"] == "deferred" and again["blocks"]["done"] == 2
    done = build_within_budget(loaded, cfg, float("inf"))
    assert done["status"] == "complete" and done["blocks"] == {"done": 8, "total": 8}
    assert 0 <= done["disk_bytes"] - disk_estimate(loaded, cfg) <= 2 * 4096  # the arrays + 2 .npy headers
    whole = build_sketches(LoadedWorkspace.load(other, search=False), cfg)
    for read in ("sketches", "rows"):
        a = torch.from_numpy(np.array(getattr(open_index(Path(done["path"]), whole.key), read)()))
        b = torch.from_numpy(np.array(getattr(whole, read)()))
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)  # same batches, another process state


@pytest.mark.parametrize("gradient_l2", ["none", "test_and_train"])
def test_preconditioned_rows_answer_like_the_factor_and_spare_the_next_process_its_factor(
    tiny_workspace, gradient_l2
):
    """Kept ``H⁻¹φ_i`` (the default) give the factor path's values and self-influences (float32 rows: to
    1e-5 of the largest score); a new session (as a new process would) reads them without factoring."""
    from fastif_core.queries import sketch as sq
    from fastif_core.store import Store

    loaded = LoadedWorkspace.load(tiny_workspace, search=False)
    build_sketches(loaded, SketchConfig(dim=300))
    cfg = InfluenceConfig(s_test=STestConfig.default(), gradient_l2=gradient_l2)
    with Store.open(tiny_workspace) as store:
        records = [store.get_example(EXAMPLE, 1).to_record()]
    batches = [loaded.encode_test(r) for r in records]
    sq._SESSION.clear()
    plain = sq.session(loaded, SketchQueryConfig(SketchConfig(dim=300), precondition=False), cfg)
    want, _ = sq.sketch_scores(plain, loaded.objective, batches, cfg)
    want_self = plain.self_influence().clone()
    assert plain.factor is not None and plain.solved is None
    for path in plain.index.path.glob("self_influence-*.npy"):
        path.unlink()  # computed again below from the kept rows
    sq._SESSION.clear()
    first = sq.session(loaded, SketchQueryConfig(SketchConfig(dim=300)), cfg)
    assert first.factor is None and "precondition" in first.seconds  # built now, the factor freed
    sq._SESSION.clear()
    again = sq.session(loaded, SketchQueryConfig(SketchConfig(dim=300)), cfg)
    assert again.factor is None and again.seconds["factor"] == 0.0 and "load" in again.seconds
    got, seconds = sq.sketch_scores(again, loaded.objective, batches, cfg)
    scale = float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(again.self_influence(), want_self, rtol=1e-4, atol=0)
    sq._SESSION.clear()
