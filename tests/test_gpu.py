"""CUDA paths end to end (skipped without CUDA): the same workspace answers the same on GPU as on CPU,
and a worker on ``cuda:0`` runs a queued job."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from fastif_core import jobs
from fastif_core.config import InfluenceConfig, STestConfig
from fastif_core.queries.influence import influence_query
from fastif_core.store import Store
from fastif_core.workspace.layout import LoadedWorkspace

pytestmark = pytest.mark.gpu

CFG = InfluenceConfig(s_test=STestConfig(depth=30, batch_size=4, repeats=2, seed=3), k=20, top=0)


def _scores(result: dict) -> dict[str, float]:
    return {r["train_id"]: r["influence"] for r in result["helpful"] + result["harmful"]}


def test_influence_on_cuda_equals_cpu(tiny_workspace: Path, tmp_path: Path):
    import shutil

    cpu_ws = tmp_path / "cpu"
    shutil.copytree(tiny_workspace, cpu_ws)
    example = "demo-hans:challenge:ex1"
    on_cpu = influence_query(cpu_ws, example, CFG, device="cpu")
    loaded = LoadedWorkspace.load(tiny_workspace, "cuda:0")
    assert loaded.objective.device.type == "cuda"
    on_gpu = influence_query(tiny_workspace, example, CFG, device="cuda:0", loaded=loaded)
    a, b = _scores(on_cpu), _scores(on_gpu)
    assert a.keys() == b.keys() and len(a) == 20
    ref = torch.tensor([a[k] for k in a], dtype=torch.float64)
    got = torch.tensor([b[k] for k in a], dtype=torch.float64)
    assert torch.linalg.norm(got - ref) <= 1e-3 * torch.linalg.norm(ref)


def test_worker_on_cuda_runs_a_job(tiny_workspace: Path):
    from fastif_core.worker.loop import run_worker

    store = Store.open(tiny_workspace)
    try:
        job = jobs.enqueue(store, "influence", jobs.InfluenceParams("demo-hans:challenge:ex2", CFG))
        stop = threading.Event()
        n = run_worker(tiny_workspace, "cuda:0", once=True, poll=0.2, lease_seconds=30, stop_event=stop)
        done = store.get_job(job.id)
    finally:
        store.close()
    assert n == 1 and done.status == "done", done.error
    assert done.device and done.device.startswith("cuda")
