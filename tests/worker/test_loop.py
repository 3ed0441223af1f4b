"""worker: real worker processes on a real (tiny) prepared workspace and its SQLite store.

Two workers share 20 jobs, each done exactly once; a worker killed with SIGKILL mid-job loses its
lease and a second worker completes the job (scores complete, not duplicated); bad parameters fail
clearly and the worker serves the next job; a cancelled job stores nothing; SIGTERM releases the
current job; a cpu:2 worker stores the same scores as the serial pipeline; under torchrun both ranks
work on a job; a prepare job makes a new workspace ready for influence jobs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from factories import make_tiny_bert, make_tiny_tokenizer

from fastif_core import jobs
from fastif_core.config import InfluenceConfig, KnnConfig, PrepareConfig, STestConfig, TrainConfig
from fastif_core.queries.influence import influence_query
from fastif_core.store import Store
from fastif_core.worker.loop import run_worker
from fastif_core.worker.process import LOG_FILE, spawn_worker, start_worker_process, worker_alive

K = 4  # candidates per query (the tiny workspace has 30 training examples)


def tiny_prepare_config(model_dir: Path) -> PrepareConfig:
    """30 demo training examples on a random 2-layer BERT saved at ``model_dir``."""
    make_tiny_bert(0).save_pretrained(model_dir)
    make_tiny_tokenizer().save_pretrained(model_dir)
    return PrepareConfig(
        train="demo",
        demo_size=40,
        max_train=30,
        model=str(model_dir),
        neighbors=3,
        train_config=TrainConfig(epochs=0.5, batch_size=8, max_length=32),
        knn=KnnConfig(k=K, use_gpu=False),
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A tiny prepared workspace, built once."""
    from fastif_core.workspace.prepare import prepare

    base = tmp_path_factory.mktemp("tiny")
    prepare(base / "ws", tiny_prepare_config(base / "model"), show_progress=False)
    return base / "ws"


@pytest.fixture
def ws(prepared: Path, tmp_path: Path, monkeypatch) -> Path:
    """A private copy of the prepared workspace (its own database); worker processes use one thread
    each so two of them do not oversubscribe the CI machine's cores."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return Path(shutil.copytree(prepared, tmp_path / "ws"))


def eval_ids(root: Path, n: int) -> list[str]:
    with Store.open(root) as store:
        return [r.id for r in store.query_examples(limit=500) if r.split != "train"][:n]


def config(depth: int = 3, repeats: int = 1, k: int | None = K) -> InfluenceConfig:
    return InfluenceConfig(s_test=STestConfig(depth=depth, batch_size=1, repeats=repeats, scale=100.0), k=k)


def enqueue(root: Path, example_id: str, cfg: InfluenceConfig):
    with Store.open(root) as store:
        return jobs.enqueue(store, "influence", jobs.InfluenceParams(example_id, cfg))


def job(root: Path, job_id: int):
    with Store.open(root) as store:
        return store.get_job(job_id)


def wait_for(cond: Callable[[], bool], timeout: float, what: str, root: Path | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.2)
    log = (root / LOG_FILE).read_text()[-3000:] if root is not None and (root / LOG_FILE).exists() else ""
    pytest.fail(f"timed out after {timeout} s waiting for {what}\n{log}")


def stop(pid: int, timeout: float = 60.0) -> None:
    """SIGTERM a worker started by start_worker_process and reap it."""
    os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"worker {pid} ignored SIGTERM for {timeout} s")


def runs_of(root: Path) -> list:
    with Store.open(root) as store:
        return [store.get_influence_run(r.id, with_text=False) for r in store.list_influence_runs(limit=1000)]


def test_two_workers_run_twenty_jobs_exactly_once(ws):
    queued = [enqueue(ws, ex, config()) for ex in eval_ids(ws, 20)]
    assert len({j.id for j in queued}) == 20
    pids = [start_worker_process(ws, "cpu:1", poll=0.2, lease_seconds=30) for _ in range(2)]
    try:
        wait_for(lambda: worker_alive(ws), 120, "a worker heartbeat", ws)
        wait_for(lambda: all(job(ws, j.id).finished for j in queued), 300, "20 jobs to finish", ws)
    finally:
        for pid in pids:
            stop(pid)
    finished = [job(ws, j.id) for j in queued]
    assert [j.status for j in finished] == ["done"] * 20, [j.error for j in finished]
    assert all(j.attempts == 1 for j in finished)  # claimed once each: never run twice
    runs = runs_of(ws)
    assert sorted(r.job_id for r in runs) == sorted(j.id for j in queued)
    assert sorted(j.result["influence_run_id"] for j in finished) == sorted(r.id for r in runs)
    assert all(r.num_candidates == K and len({s.train_id for s in r.scores}) == K for r in runs)
    with Store.open(ws) as store:
        workers = store.list_workers()
    assert len(workers) == 2 and {w.status for w in workers} == {"stopped"}
    assert {j.lease_owner for j in finished} <= {w.id for w in workers}
    assert not worker_alive(ws)


@pytest.mark.slow
def test_killed_worker_job_is_completed_by_another(ws):
    example = eval_ids(ws, 1)[0]
    queued = enqueue(ws, example, config(depth=300))
    first = start_worker_process(ws, "cpu:1", poll=0.2, lease_seconds=3)
    try:
        wait_for(lambda: job(ws, queued.id).progress > 0.05, 180, "the first worker to make progress", ws)
    finally:
        os.kill(first, signal.SIGKILL)
        os.waitpid(first, 0)
    killed = job(ws, queued.id)
    assert killed.status == "running" and killed.attempts == 1 and runs_of(ws) == []
    second = start_worker_process(ws, "cpu:1", poll=0.2, lease_seconds=3)
    try:
        wait_for(lambda: job(ws, queued.id).finished, 300, "the second worker to finish the job", ws)
    finally:
        stop(second)
    done = job(ws, queued.id)
    assert done.status == "done" and done.attempts == 2
    assert "stopped responding" in done.error and done.lease_owner != killed.lease_owner
    (run,) = runs_of(ws)
    assert run.job_id == queued.id and run.example_id == example
    assert len(run.scores) == K and len({s.train_id for s in run.scores}) == K  # complete, no duplicates
    assert sorted(s.rank for s in run.scores) == list(range(K))


def test_bad_parameters_fail_clearly_and_the_worker_serves_the_next_job(ws):
    good_id = eval_ids(ws, 1)[0]
    cfg = {"k": K, "s_test": {"depth": 3, "batch_size": 1, "scale": 100.0}}
    with Store.open(ws) as store:  # raw parameters, as an old client or a hand-made row would send them
        bad = {
            "unknown example": store.enqueue_job("influence", {"example_id": "no-such-id", "config": cfg}),
            "depth=0": store.enqueue_job(
                "influence", {"example_id": good_id, "config": {"s_test": {"depth": 0}}}
            ),
            "k=0": store.enqueue_job("influence", {"example_id": good_id, "config": {"k": 0}}),
            "too large k": store.enqueue_job(
                "influence", {"example_id": good_id, "config": {**cfg, "k": 31}}
            ),
        }
    good = enqueue(ws, good_id, config())
    assert run_worker(ws, "cpu:1", once=True, poll=0.1) == 5
    failed = {name: job(ws, j.id) for name, j in bad.items()}
    assert {j.status for j in failed.values()} == {"failed"}
    assert (
        "no-such-id" in failed["unknown example"].error
        and "fastif examples" in failed["unknown example"].error
    )
    assert "depth=0 is invalid" in failed["depth=0"].error
    assert "k=0 is invalid" in failed["k=0"].error
    assert "k=31 is larger than the training set (30 examples)" in failed["too large k"].error
    assert all(j.attempts == 1 for j in failed.values())  # final: not retried
    assert job(ws, good.id).status == "done"
    assert [r.example_id for r in runs_of(ws)] == [good_id]


def test_prepare_job_then_influence_job_on_a_new_workspace(tmp_path):
    from fastif_core.workspace.layout import read_manifest

    root = tmp_path / "fresh"
    with Store.open(root) as store:
        prep = jobs.enqueue(store, "prepare", tiny_prepare_config(tmp_path / "model"))
    assert run_worker(root, "cpu:1", once=True, poll=0.1) == 1
    done = job(root, prep.id)
    assert done.status == "done", done.error
    assert (
        read_manifest(root)["status"] == "ready"
        and done.result["model_id"] == read_manifest(root)["model_id"]
    )
    query = enqueue(root, eval_ids(root, 1)[0], config())
    assert run_worker(root, "cpu:1", once=True, poll=0.1) == 1
    assert job(root, query.id).status == "done" and len(runs_of(root)) == 1


def test_unknown_handler_module_is_a_clear_error(ws, monkeypatch):
    from fastif_core.errors import ConfigError

    monkeypatch.setenv("FASTIF_WORKER_MODULES", "fastif_core.no_such_app")
    with pytest.raises(ConfigError, match="FASTIF_WORKER_MODULES: cannot import 'fastif_core.no_such_app'"):
        run_worker(ws, "cpu:1", once=True)


def test_cancelled_job_stops_and_stores_nothing(ws):
    first, second = eval_ids(ws, 2)
    long = enqueue(ws, first, config(depth=2000))
    stop_event = threading.Event()
    thread = threading.Thread(
        target=run_worker,
        args=(ws, "cpu:1"),
        daemon=True,
        kwargs={"poll": 0.1, "lease_seconds": 2.0, "stop_event": stop_event},
    )
    thread.start()
    try:
        wait_for(lambda: job(ws, long.id).progress > 0.0, 120, "the long job to make progress")
        with Store.open(ws) as store:
            store.cancel_job(long.id)
        wait_for(lambda: job(ws, long.id).finished, 60, "the cancel to be honoured")
        short = enqueue(ws, second, config())
        wait_for(lambda: job(ws, short.id).finished, 120, "the next job")
    finally:
        stop_event.set()
        thread.join(60)
    assert not thread.is_alive()
    assert job(ws, long.id).status == "cancelled" and job(ws, short.id).status == "done"
    assert [r.example_id for r in runs_of(ws)] == [second]  # nothing stored for the cancelled job


def test_sigterm_releases_the_current_job(ws):
    queued = enqueue(ws, eval_ids(ws, 1)[0], config(depth=2000))
    pid = start_worker_process(ws, "cpu:1", poll=0.2, lease_seconds=30)
    wait_for(lambda: job(ws, queued.id).progress > 0.0, 180, "the job to make progress", ws)
    stop(pid)
    released = job(ws, queued.id)
    assert released.status == "queued" and released.attempts == 0 and released.lease_owner is None
    assert runs_of(ws) == []
    assert "released" in (ws / LOG_FILE).read_text()


@pytest.mark.slow
def test_two_ranks_store_the_serial_scores(prepared, tmp_path):
    par, ser = (Path(shutil.copytree(prepared, tmp_path / name)) for name in ("par", "ser"))
    example = eval_ids(par, 1)[0]
    cfg = config(depth=20, repeats=3, k=10)
    queued = enqueue(par, example, cfg)
    assert run_worker(par, "cpu:2", once=True, poll=0.1) == 1
    assert job(par, queued.id).status == "done"
    serial = influence_query(ser, example, cfg, device="cpu")
    (run,) = runs_of(par)
    assert run.s_test_stats["ranks"] == 2 and run.s_test_stats["repetitions"] == 3
    parallel = {s.train_id: s.value for s in run.scores}
    expected = {r["train_id"]: r["influence"] for r in serial["helpful"] + serial["harmful"]}
    assert expected and set(expected) <= set(parallel)
    # another process, s_test summed across two ranks: a score carries float32 rounding of the largest
    # scores (~1e-6 of them), so near-zero scores are compared at that scale, not at their own
    scale = max(abs(v) for v in expected.values())
    for train_id, value in expected.items():
        assert parallel[train_id] == pytest.approx(value, rel=1e-5, abs=1e-5 * scale)


def test_worker_under_torchrun_uses_every_rank(ws):
    import subprocess
    import sys

    queued = enqueue(ws, eval_ids(ws, 1)[0], config(depth=10, repeats=2))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "fastif_core",
        "worker",
        "--workspace",
        str(ws),
        "--once",
        "--poll",
        "0.2",
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    done = job(ws, queued.id)
    assert done.status == "done" and done.device == "torchrun:2"
    (run,) = runs_of(ws)
    assert run.s_test_stats["ranks"] == 2 and run.s_test_stats["repetitions"] == 2
    with Store.open(ws) as store:
        (worker,) = store.list_workers()
    assert worker.devices == ["cpu", "cpu"]  # every rank's real device, not "torchrun:2"


def checked_workspace_state(device: str, rank: int, root: str):
    """The worker's rank loader, failing the load (on rank 0, through the group) if a follower loaded
    the kNN index or the features, or if rank 0 did not."""
    from fastif_core.errors import JobError
    from fastif_core.worker.handlers import load_workspace_state

    state = load_workspace_state(device, rank, root)
    loaded = state.info["loaded"]
    has = {"index": loaded.index is not None, "features": loaded.features is not None}
    if has != {"index": rank == 0, "features": rank == 0}:
        raise JobError(f"rank {rank} loaded {has}")
    return state


def test_followers_load_neither_index_nor_features(prepared):
    from fastif_core.parallel.group import ParallelContext

    example = eval_ids(prepared, 1)[0]
    with ParallelContext.start("cpu:2", timeout_s=120) as group:
        loaded = group.load("ws", checked_workspace_state, root=str(prepared)).info["loaded"]
        candidates, _ = loaded.nearest(example, K)  # rank 0 searches; the follower only scores its shard
        result = group.influence("ws", loaded.encode_test(_record(prepared, example)), candidates, config())
    assert result.indices.tolist() == candidates and result.s_test_stats["ranks"] == 2
    assert result.values.isfinite().all()


def _record(root: Path, example_id: str):
    with Store.open(root) as store:
        (row,) = store.get_examples([example_id])
    return row.to_record()


def follower_pids(pid: int) -> list[int]:
    """Pids of the device-group ranks a worker process spawned (not multiprocessing's resource tracker)."""
    out = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and "spawn_main" in cmdline:
            out.append(int(entry.name))
    return out


def test_hung_follower_requeues_the_job_within_the_lease(ws):
    """A follower frozen mid-query (SIGSTOP: alive, silent, its sockets open) used to hang rank 0 for the
    24 h process-group timeout while the heartbeat kept renewing the lease."""
    queued = enqueue(ws, eval_ids(ws, 1)[0], config(depth=400, repeats=2))
    proc = spawn_worker(ws, "cpu:2", poll=0.2, lease_seconds=3)
    follower = None
    try:
        wait_for(lambda: job(ws, queued.id).progress > 0.0, 180, "the job to make progress", ws)
        (follower,) = follower_pids(proc.pid)
        os.kill(follower, signal.SIGSTOP)
        wait_for(lambda: job(ws, queued.id).status == "queued", 90, "the job to be requeued", ws)
        assert proc.wait(timeout=60) != 0  # the worker exits: its group is unusable
    finally:
        if follower is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(follower, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    requeued = job(ws, queued.id)
    assert requeued.attempts == 1 and requeued.lease_owner is None and runs_of(ws) == []
    assert "GroupLost: rank 1 of 2 stopped responding" in requeued.error and "bound 3 s" in requeued.error
    # given back by its own worker while it held the lease (the store's fail-and-retry path), not left to
    # run out: with the heartbeat renewing a hung query's lease it would still be "running" here
    assert requeued.message == "retrying after error in attempt 1" and requeued.lease_expires_at is None
    assert "lease expired" not in requeued.error
    assert "exited or stopped responding" in (ws / LOG_FILE).read_text()
    assert run_worker(ws, "cpu:1", once=True, poll=0.1) == 1  # a fresh worker completes it
    done = job(ws, queued.id)
    assert done.status == "done" and done.attempts == 2 and len(runs_of(ws)) == 1
