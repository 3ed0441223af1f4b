"""Job queue: deduplicated enqueue, atomic claims across real processes, leases, retries, cancellation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fastif_core import jobs
from fastif_core.config import InfluenceConfig, KnnConfig, PrepareConfig, STestConfig, to_dict
from fastif_core.errors import JobError, LeaseLostError
from fastif_core.store import Store

ROOT = Path(__file__).resolve().parents[1]


def _expire(lease_s: float = 0.05) -> None:
    time.sleep(lease_s * 3)  # let a lease of lease_s seconds run out


def test_enqueue_twice_is_one_job(store):
    a = jobs.enqueue(store, "influence", {"example_id": "x"})
    b = jobs.enqueue(store, "influence", jobs.InfluenceParams("x", InfluenceConfig()))
    c = jobs.enqueue(store, "influence", {"model_id": None, "example_id": "x", "config": {"k": 1000}})
    assert a.id == b.id == c.id and store.job_counts() == {"queued": 1}
    other = jobs.enqueue(store, "influence", {"example_id": "x", "config": {"k": 10}})
    assert other.id != a.id
    assert a.params["config"]["s_test"] == to_dict(STestConfig.default())  # defaults filled in
    prep = jobs.enqueue(store, "prepare", PrepareConfig(evals=("demo",), knn=KnnConfig(k=5)))
    assert jobs.job_params(store.get_job(prep.id)) == PrepareConfig(evals=("demo",), knn=KnnConfig(k=5))


def test_prepare_over_changed_files_is_a_new_job(store, tmp_path: Path):
    """A done prepare is the answer to the same request only while the files it read are unchanged."""
    data = tmp_path / "train.tsv"
    data.write_text("sentence1\tsentence2\tgold_label\nA cat sleeps.\tA cat rests.\tentailment\n")
    cfg = PrepareConfig(train=str(data), knn=KnnConfig(k=5))
    first = jobs.enqueue(store, "prepare", cfg)
    store.claim_job("w", kinds=["prepare"])
    store.complete_job(first.id, "w", result={"model_id": 1})
    assert jobs.enqueue(store, "prepare", cfg).id == first.id  # same files: the done job answers
    data.write_text(data.read_text() + "A dog runs.\tA dog sits.\tcontradiction\n")
    changed = jobs.enqueue(store, "prepare", cfg)
    assert changed.id != first.id and changed.status == "queued"
    assert changed.params == first.params  # the same settings; the key differs by the files' contents


def test_running_and_done_jobs_are_reused_failed_and_cancelled_are_not(store):
    job = jobs.enqueue(store, "influence", {"example_id": "x"})
    store.claim_job("w")
    assert jobs.enqueue(store, "influence", {"example_id": "x"}).id == job.id  # running
    store.complete_job(job.id, "w", result={"influence_run_id": 7})
    assert jobs.enqueue(store, "influence", {"example_id": "x"}).id == job.id  # done
    y = jobs.enqueue(store, "influence", {"example_id": "y"})
    store.claim_job("w")
    store.fail_job(y.id, "w", "boom")
    y2 = jobs.enqueue(store, "influence", {"example_id": "y"})
    assert y2.id != y.id and y2.status == "queued"
    store.cancel_job(y2.id)
    y3 = jobs.enqueue(store, "influence", {"example_id": "y"})
    assert y3.id not in (y.id, y2.id) and store.find_job("influence", y3.params_hash).id == y3.id


@pytest.mark.parametrize(
    "params, match",
    [
        ({"example_id": "x", "config": {"s_test": {"depth": 0}}}, "depth=0"),
        ({"example_id": "x", "config": {"k": 0}}, "k=0"),
        ({"example_id": ""}, "example_id"),
        ({"config": {}}, "example_id"),
        ({"example_id": "x", "cfg": {}}, "unknown field"),
        ({"example_id": "x", "config": {"s_test": {"depth": "many"}}}, "invalid parameters"),
    ],
)
def test_bad_parameters_are_rejected_at_enqueue(store, params, match):
    with pytest.raises(JobError, match=match):
        jobs.enqueue(store, "influence", params)
    assert store.list_jobs() == []


def test_unknown_and_reserved_kinds(store):
    with pytest.raises(JobError, match="allowed .*influence.*prepare"):
        jobs.enqueue(store, "nonsense", {})
    with pytest.raises(JobError, match="not available"):
        jobs.get_kind("benchmark")  # reserved, never registered
    assert {k.name for k in jobs.kinds()} >= {"influence", "prepare"}


def test_bad_parameters_in_a_stored_job_fail_it_for_good(store):
    raw = store.enqueue_job("influence", {"example_id": "x", "config": {"s_test": {"depth": 0}}})
    job = store.claim_job("w")
    with pytest.raises(JobError, match="depth=0") as err:
        jobs.job_params(job)
    assert not jobs.is_retryable(err.value)
    failed = store.fail_job(raw.id, "w", str(err.value), retry=jobs.is_retryable(err.value))
    assert (failed.status, failed.attempts, failed.error) == ("failed", 1, str(err.value))
    assert store.claim_job("w") is None


def test_retryable_failure_requeues_until_max_attempts(store):
    job = store.enqueue_job("influence", {"example_id": "x"}, max_attempts=2)
    assert jobs.is_retryable(MemoryError()) and not jobs.is_retryable(ValueError())
    store.claim_job("w")
    assert store.fail_job(job.id, "w", "out of memory", retry=True).status == "queued"
    again = store.claim_job("w")
    assert (again.id, again.attempts) == (job.id, 2)
    final = store.fail_job(job.id, "w", "out of memory again", retry=True)
    assert (final.status, final.error) == ("failed", "out of memory again")


CLAIMER = textwrap.dedent(
    """
    import json, os, sys, time
    from fastif_core.store import Store
    url, owner, go = sys.argv[1], sys.argv[2], sys.argv[3]
    store = Store.open(url=url)
    while not os.path.exists(go):
        time.sleep(0.005)
    claimed = []
    while (job := store.claim_job(owner, lease_seconds=60)) is not None:
        store.heartbeat_job(job.id, owner, progress=0.5, message="working")
        store.complete_job(job.id, owner, result={"by": owner})
        claimed.append(job.id)
    print(json.dumps(claimed))
    """
)


def test_two_processes_racing_claim_each_job_exactly_once(tmp_path, db_url):
    url = db_url
    with Store.open(url=url) as st:
        ids = [st.enqueue_job("influence", {"example_id": f"e{i}"}).id for i in range(20)]
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, url, f"worker{i}", str(go)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for i in range(2)
    ]
    time.sleep(1.0)  # both interpreters up and waiting (a late one only makes the race one-sided)
    go.touch()
    claimed = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(claimed[0] + claimed[1]) == ids  # every job once, none twice
    with Store.open(url=url) as st:
        done = st.list_jobs(limit=50)
        assert {j.status for j in done} == {"done"} and {j.attempts for j in done} == {1}
        assert all(j.result == {"by": j.lease_owner} for j in done)


def test_expired_lease_is_reclaimed_and_the_old_owner_is_refused(store):
    job = store.enqueue_job("influence", {"example_id": "x"})
    # a lease long enough that the second claim surely falls inside it, even on a loaded machine
    assert store.claim_job("w1", lease_seconds=1.0, device="cpu:0").attempts == 1
    assert store.claim_job("w2", lease_seconds=60) is None  # lease still valid
    _expire(1.0)
    taken = store.claim_job("w2", lease_seconds=60, device="cpu:1")
    assert (taken.id, taken.attempts, taken.lease_owner, taken.device) == (job.id, 2, "w2", "cpu:1")
    assert "worker w1 stopped responding" in taken.error
    with pytest.raises(LeaseLostError, match="leased to w2"):
        store.heartbeat_job(job.id, "w1")
    with pytest.raises(LeaseLostError):
        store.complete_job(job.id, "w1", lambda s: {"x": 1})
    assert store.complete_job(job.id, "w2", result={"ok": True}).result == {"ok": True}


def test_after_max_attempts_an_abandoned_job_fails_with_the_last_error(store):
    job = store.enqueue_job("influence", {"example_id": "x"}, max_attempts=2)
    store.claim_job("w1", lease_seconds=0.05)
    _expire()
    store.claim_job("w2", lease_seconds=0.05)
    _expire()
    assert store.claim_job("w3") is None
    failed = store.get_job(job.id)
    assert failed.status == "failed" and failed.attempts == 2 and failed.finished_at is not None
    assert "gave up after 2 of 2 attempts" in failed.error and "w2" in failed.error and "w1" in failed.error
    assert jobs.enqueue(store, "influence", {"example_id": "x"}).id != job.id  # may be queued again


def test_a_killed_process_loses_its_job_to_another(db_url):
    url = db_url
    script = (
        "import sys, time\nfrom fastif_core.store import Store\n"
        "job = Store.open(url=sys.argv[1]).claim_job('doomed', lease_seconds=0.5)\n"
        "print(job.id, flush=True)\ntime.sleep(600)\n"
    )
    with Store.open(url=url) as st:
        job = st.enqueue_job("influence", {"example_id": "x"})
        proc = subprocess.Popen(
            [sys.executable, "-c", script, url], stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        assert int(proc.stdout.readline()) == job.id
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        time.sleep(0.6)  # the dead worker's lease runs out
        taken = st.claim_job("survivor")
        assert (taken.id, taken.attempts) == (job.id, 2)
        assert st.complete_job(job.id, "survivor", result={}).status == "done"


def test_cancel_queued_and_running_jobs(store):
    queued = store.enqueue_job("influence", {"example_id": "q"})
    assert store.cancel_job(queued.id).status == "cancelled"
    running = store.enqueue_job("influence", {"example_id": "r"})
    assert store.claim_job("w").id == running.id  # the cancelled one is never claimed
    assert store.heartbeat_job(running.id, "w", progress=0.3) is False
    req = store.cancel_job(running.id)
    assert (req.status, req.cancel_requested) == ("running", True)
    assert (
        store.heartbeat_job(running.id, "w", progress=0.4, message="step 2") is True
    )  # the worker learns it
    assert store.get_job(running.id).message == "step 2"
    done = store.confirm_cancel(running.id, "w")
    assert (done.status, done.progress, done.result) == ("cancelled", 0.4, None)
    assert store.cancel_job(running.id).status == "cancelled"  # finished jobs stay as they are


def test_cancel_requested_on_a_dead_workers_job_ends_cancelled(store):
    job = store.enqueue_job("influence", {"example_id": "x"})
    store.claim_job("w1", lease_seconds=0.05)
    store.cancel_job(job.id)
    _expire()
    assert store.claim_job("w2") is None and store.get_job(job.id).status == "cancelled"


def test_complete_writes_results_and_done_together(store):
    job = store.enqueue_job("bench", {"quick": True})
    store.claim_job("w")

    def broken_writer(s):
        from fastif_core.store import results

        results.save_app_result(s, "bench", None, {"quick": True}, {"t": 1}, "default", job.id)
        raise RuntimeError("crash half-way")

    with pytest.raises(RuntimeError):
        store.complete_job(job.id, "w", broken_writer)
    assert store.latest_bench() is None and store.get_job(job.id).status == "running"
    info = store.save_bench({"quick": True}, {"t": 2}, job_id=job.id, owner="w")
    assert store.get_job(job.id).result == {"bench_id": info.id}
    with pytest.raises(LeaseLostError, match="status done"):
        store.save_bench({"quick": True}, {"t": 3}, job_id=job.id, owner="w")
    assert [b.result for b in store.list_app_results("bench")] == [{"t": 2}]


def test_release_requeues_without_counting_and_priority_and_kinds_order_claims(store):
    low = store.enqueue_job("influence", {"example_id": "low"})
    high = store.enqueue_job("influence", {"example_id": "high"}, priority=5)
    prep = store.enqueue_job("prepare", {})
    assert store.claim_job("w", kinds=["prepare"]).id == prep.id
    assert store.claim_job("w").id == high.id
    released = store.release_job(high.id, "w")
    assert (released.status, released.attempts, released.lease_owner) == ("queued", 0, None)
    assert [store.claim_job("w").id for _ in range(2)] == [high.id, low.id]


def test_worker_registry(store):
    store.worker_heartbeat("host:1", host="host", pid=1, devices=["cpu:0", "cpu:1"])
    store.worker_heartbeat("host:2", host="host", pid=2, devices=["cuda:0"], status="stopped")
    alive = store.list_workers(alive_within_s=60)
    assert [(w.id, w.devices) for w in alive] == [("host:1", ["cpu:0", "cpu:1"])]
    beat = store.worker_heartbeat("host:1", current_job_id=3)
    assert (beat.pid, beat.current_job_id) == (1, 3) and len(store.list_workers()) == 2


def test_every_job_kind_has_a_worker_handler_and_the_sketch_kinds_validate():
    """The two explicit tables agree (a kind added to one alone is caught here), including the gradient
    sketches' kinds; their parameters round-trip through the queue's JSON."""
    from fastif_core.config import SketchConfig, SketchQueryConfig
    from fastif_core.worker.registry import HANDLERS

    assert set(HANDLERS) == set(jobs.KINDS)
    params = jobs.SketchClickParams("ex", sketch=SketchQueryConfig(sketch=SketchConfig(dim=300)), rerank=7)
    assert jobs.parse_params("sketch_click", jobs.params_dict(params)) == params
    built = jobs.SketchParams(config=SketchConfig(dim=300, rows="mc"), model_id=2)
    assert jobs.parse_params("sketch", jobs.params_dict(built)) == built
    with pytest.raises(JobError, match="rerank"):
        jobs.parse_params("sketch_click", {**jobs.params_dict(params), "rerank": 0})
