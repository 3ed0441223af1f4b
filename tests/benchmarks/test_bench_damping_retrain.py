"""``fastif bench --section damping --retrain`` (issue 28, item 2): the retraining check per damping μ on the
built-in corpus's tiny workspace — removal sets taken from the sweep's cells, the predicted and actual
changes recomputed here, one fine-tuning repeated independently, a stopped run resumed, two processes
sharing the plan — and the plan's order and claims on their own."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastif_core.benchmarks.damping_retrain import RetrainStore, bisection_order, plan, removal_rows
from fastif_core.benchmarks.retrain import fine_tuned, train_setup
from fastif_core.benchmarks.solvers import file_slug
from fastif_core.store import Store
from fastif_core.workspace.layout import LoadedWorkspace

REPO = Path(__file__).resolve().parents[2]
K = 40  # candidates of the tiny workspace's 60 training examples
ARGS = ["--section", "damping", "--test-examples", "4", "--solver-k", str(K), "--damping-mus", "0.5"]
RETRAIN = ["--retrain", "--retrain-ms", "2,5", "--retrain-examples", "2"]


def _bench(ws: Path, out: Path, *extra: str, wait: bool = True):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "fastif_core", "bench", "-w", str(ws), "--out", str(out), *ARGS, *extra]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    return run


def _cells(out: Path, test: str, mu: str) -> torch.Tensor:
    """The influence values the sweep stored for one test and μ."""
    (path,) = (out / "damping-cache").glob(f"{file_slug(test)}-mu{mu}-*.json")
    return torch.tensor(json.loads(path.read_text())["values"], dtype=torch.float64)


def test_retraining_per_mu_on_the_built_in_corpus(tiny_workspace: Path, tmp_path: Path):
    out = tmp_path / "bench"
    first = _bench(tiny_workspace, out, *RETRAIN, "--retrain-max-runs", "5")
    partial = json.loads((out / "damping-retrain.json").read_text())
    assert partial["done"] == partial["ran_now"] == 5 and partial["planned"] > 5
    assert "fine-tunings: 5 of" in first.stdout
    stored = sorted((out / "damping-retrain").glob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in stored]
    second = _bench(tiny_workspace, out, *RETRAIN)  # resumes: only the rest is fine-tuned
    result = json.loads((out / "damping-retrain.json").read_text())
    assert result["done"] == result["planned"] and result["ran_now"] == result["planned"] - 5
    assert [p.stat().st_mtime_ns for p in stored] == stamps and "| 0.5 |" in second.stdout
    assert not list((out / "damping-retrain").glob("*.claim"))

    loaded = LoadedWorkspace.load(tiny_workspace, "cpu")
    n = len(loaded.train)
    sweep = json.loads((out / "damping.json").read_text())
    tests = [t["id"] for t in sweep["tests"][:2]]
    assert result["num_train"] == n and result["settings"]["ms"] == [2, 5]
    # the same seed and settings reproduce the workspace's own checkpoint (same thread count, same data);
    # every fine-tuned model's loss is kept for all 4 sweep tests, not only the 2 with removal sets
    assert len(result["baseline_minus_workspace"]) == 4
    assert all(abs(d) < 1e-4 for d in result["baseline_minus_workspace"].values()), result
    noise = result["noise_floor"]
    assert noise["seeds"] == [0, 1] and noise["abs_change"]["n"] == 4 and noise["max"] > 0

    records = [json.loads(p.read_text()) for p in (out / "damping-retrain").glob("*.json")]
    base = next(r for r in records if r["key"]["seed"] == 0 and not r["rows"])
    by_rows = {(r["key"]["seed"], tuple(r["rows"])): r for r in records}
    for mu in ("50", "0.5"):
        row = result["by_mu"][mu]
        assert row["pairs"] == 2 * 3 * 2  # tests × kinds × m
        for p in row["points"]:
            i = tests.index(p["test"])
            values = _cells(out, p["test"], mu)
            cands = loaded.nearest(p["test"], K)[0]
            rows = removal_rows(cands, values, p["m"], p["kind"], i)  # the sets, from the stored cells
            where = [cands.index(r) for r in rows]
            if p["kind"] == "helpful":  # the m most negative influences of the candidates
                assert sorted(values[where].tolist()) == sorted(values.tolist())[: p["m"]]
            elif p["kind"] == "harmful":
                assert sorted(values[where].tolist()) == sorted(values.tolist())[-p["m"] :]
            assert p["predicted"] == pytest.approx(-float(values[where].sum()) / n, rel=1e-12)
            actual = by_rows[(0, rows)]["losses"][p["test"]] - base["losses"][p["test"]]
            assert p["actual"] == pytest.approx(actual, rel=1e-12, abs=1e-15)
    # the random sets do not depend on μ: the same fine-tuning answers both
    for mu_a, mu_b in (("50", "0.5"),):
        ra = {
            (p["test"], p["m"]): p["actual"] for p in result["by_mu"][mu_a]["points"] if p["kind"] == "random"
        }
        rb = {
            (p["test"], p["m"]): p["actual"] for p in result["by_mu"][mu_b]["points"] if p["kind"] == "random"
        }
        assert ra == rb
    # one removal fine-tuned again here, in this process: the stored loss is what fine-tuning gives
    rec = next(r for r in records if len(r["rows"]) == 5)
    tcfg, base_path = train_setup(loaded)
    obj = fine_tuned(loaded, sorted(set(range(n)) - set(rec["rows"])), tcfg, base_path)
    with Store.open(tiny_workspace) as store:
        example = store.get_example(tests[0], loaded.model_id).to_record()
    batch = loaded.encode_test(example)
    with torch.no_grad():  # the test's own cross-entropy, from the logits: no weight-decay term in it
        logits = obj.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    loss = float(torch.nn.functional.cross_entropy(logits, batch["labels"]))
    assert loss == pytest.approx(rec["losses"][tests[0]], abs=1e-4)
    assert abs(loss - base["losses"][tests[0]]) > 1e-6  # removing 5 of 60 examples changes the model


def test_two_processes_share_the_plan(tiny_workspace: Path, tmp_path: Path):
    out = tmp_path / "bench"
    _bench(tiny_workspace, out)  # the sweep first: both processes then only read its cells
    procs = [_bench(tiny_workspace, out, *RETRAIN, wait=False) for _ in range(2)]
    outputs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outputs]
    ran = [int(re.search(r"\((\d+) by this run\)", o).group(1)) for o, _ in outputs]
    result = json.loads((out / "damping-retrain.json").read_text())
    files = list((out / "damping-retrain").glob("*.json"))
    # every item fine-tuned exactly once between them
    assert sum(ran) == result["planned"] == len(files) and result["done"] == result["planned"]
    assert not list((out / "damping-retrain").glob("*.claim")) and not list(out.glob("*.tmp"))


def test_bisection_order_and_the_plan():
    mus = [50.0, 5.0, 0.5, 0.05, 0.005]
    assert bisection_order(mus, 50.0) == [50.0, 0.005, 0.5, 5.0, 0.05]
    assert bisection_order([50.0], 50.0) == [50.0]
    cands = [10, 11, 12, 13, 14, 15]
    same = torch.tensor([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    flipped = -same
    tests = [{"id": "t", "candidates": cands, "values": {"50": same, "5": same, "0.5": flipped}}]
    items = plan(tests, [50.0, 5.0, 0.5, 0.05], 50.0, [1, 2], seed=7)
    assert [(it["seed"], it["rows"]) for it in items[:2]] == [(7, ()), (8, ())]
    assert [len(it["rows"]) for it in items[2:]] == sorted(
        (len(it["rows"]) for it in items[2:]), reverse=True
    )
    uses = {u: it["rows"] for it in items for u in it["uses"]}
    assert uses[("t", "helpful", 2, 50.0)] == uses[("t", "helpful", 2, 5.0)] == (10, 11)
    assert uses[("t", "harmful", 2, 50.0)] == (14, 15) == uses[("t", "helpful", 2, 0.5)]  # one fine-tuning
    assert len({uses[("t", "random", 2, mu)] for mu in (50.0, 5.0, 0.5)}) == 1
    assert not any(u[3] == 0.05 for u in uses)  # a μ without converged values gets no removal sets
    rows = [(it["seed"], it["rows"]) for it in items]
    assert len(rows) == len(set(rows))  # no fine-tuning twice


def test_claims_keep_processes_apart(tmp_path: Path):
    store = RetrainStore(tmp_path, {"model": "m"})
    item = {"seed": 0, "rows": (1, 2)}
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        store.path(item).with_suffix(".claim").write_text(
            json.dumps({"host": socket.gethostname(), "pid": holder.pid})
        )
        assert not store.claim(item)  # a live process holds it
    finally:
        holder.kill()
        holder.wait()
    assert store.claim(item)  # its owner died: taken over
    assert json.loads(store.path(item).with_suffix(".claim").read_text())["pid"] == os.getpid()
    store.write(item, {"rows": [1, 2], "losses": {}, "seconds": 0.0})
    assert store.read(item)["rows"] == [1, 2] and not store.claim(item)  # done: nothing to claim
    assert not store.path(item).with_suffix(".claim").exists()
