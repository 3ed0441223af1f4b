"""The worker the dashboard starts stops with the dashboard, with real processes.

An owner process stands in for the Streamlit server: it runs the dashboard's own code path
(``app.data_access.ensure_worker``), which spawns ``python -m fastif_core worker`` exactly as the app
does, and then waits. The test kills the owner with SIGKILL (the harshest way a dashboard ends) while
the worker holds a job and checks that the worker process exits (a generous deadline, no timing
asserted) and that the store lost nothing: the job is back in the queue, its attempt not counted,
no lease held, nothing stored, the worker row marked stopped. With ``$FASTIF_KEEP_WORKER=1`` the
worker outlives its owner and keeps serving. The sidebar says which, through ``AppTest``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from fastif_core import jobs
from fastif_core.config import InfluenceConfig, STestConfig
from fastif_core.processes import pid_running
from fastif_core.store import Store
from fastif_core.worker.process import LOG_FILE

REPO = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parents[1]  # tests/: lifecycle_handlers.py
EXIT_DEADLINE_S = 60.0  # the worker promises 30 s; the assertion is that it exits at all
OWNER = """
import sys, time
from app import data_access as da
print(da.ensure_worker(da.workspace_root()), flush=True)
time.sleep(3600)
"""


def wait_for(cond: Callable[[], bool], timeout: float, what: str, root: Path | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.2)
    log = (root / LOG_FILE).read_text()[-3000:] if root is not None and (root / LOG_FILE).exists() else ""
    pytest.fail(f"timed out after {timeout} s waiting for {what}\n{log}")


def owner_env(root: Path, *, keep: bool, modules: str = "") -> dict[str, str]:
    """The dashboard's environment: auto-start on, one CPU process, one thread (a shared CI machine)."""
    env = {k: v for k, v in os.environ.items() if k != "FASTIF_KEEP_WORKER"}
    env.update(
        FASTIF_WORKSPACE=str(root),
        FASTIF_AUTOSTART_WORKER="1",
        FASTIF_WORKER_DEVICES="cpu:1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")]),
        FASTIF_WORKER_MODULES=modules,
    )
    if keep:
        env["FASTIF_KEEP_WORKER"] = "1"
    return env


def start_owner(root: Path, **env: object) -> subprocess.Popen:
    """The stand-in dashboard; returns once it has started its worker."""
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER], env=owner_env(root, **env), cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout.readline().strip() == "started"
    return owner


def kill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(30)


def worker_of(root: Path, owner_id: str | None = None) -> tuple[str, int]:
    """(id, pid) of the workspace's live worker (the one that holds ``owner_id``'s lease when given)."""
    with Store.open(root) as store:
        alive = [w for w in store.list_workers(alive_within_s=30) if owner_id in (None, w.id)]
    assert len(alive) == 1, alive
    return alive[0].id, alive[0].pid


def registered(root: Path) -> bool:
    with Store.open(root) as store:
        return bool(store.list_workers(alive_within_s=30))


def job(root: Path, job_id: int):
    with Store.open(root) as store:
        return store.get_job(job_id)


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def terminate(pid: int) -> None:
    """SIGTERM a worker that is not our child (its owner died, it was reparented) and wait for it."""
    if pid_running(pid):
        os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + EXIT_DEADLINE_S
    while pid_running(pid) and time.monotonic() < end:
        time.sleep(0.2)
    if pid_running(pid):
        os.kill(pid, signal.SIGKILL)


def enqueue_step(root: Path, seconds: float, marker: Path) -> int:
    """A ``lifecycle_step`` job (tests/lifecycle_handlers.py), queued through the store: the kind is
    registered only in the worker processes, so this test process's kind registry stays as it was."""
    with Store.open(root) as store:
        return store.enqueue_job("lifecycle_step", {"seconds": seconds, "marker": str(marker)}).id


def assert_exits(pid: int, root: Path) -> None:
    wait_for(lambda: not pid_running(pid), EXIT_DEADLINE_S, f"worker {pid} to exit after its owner", root)


def assert_handed_back(root: Path, job_id: int, worker_id: str) -> None:
    """The job is queued again as if never claimed, and the worker's row says it stopped."""
    back = job(root, job_id)
    assert back.status == "queued" and back.attempts == 0 and back.lease_owner is None, back
    assert back.result is None and back.message == f"released by {worker_id}"
    with Store.open(root) as store:
        (row,) = [w for w in store.list_workers() if w.id == worker_id]
        assert row.status == "stopped" and row.current_job_id is None
        # another worker claims it at once: no lease to wait out
        assert store.claim_job("next-worker", lease_seconds=30, kinds=[back.kind]).id == job_id


def test_dashboard_worker_hands_back_its_job_when_the_dashboard_dies(tiny_workspace: Path):
    root = tiny_workspace
    cfg = InfluenceConfig(s_test=STestConfig(depth=5000, batch_size=1, repeats=1, scale=100.0), k=4)
    with Store.open(root) as store:
        example = next(r.id for r in store.query_examples(limit=100) if r.split != "train")
        queued = jobs.enqueue(store, "influence", jobs.InfluenceParams(example, cfg))
    owner = start_owner(root, keep=False)
    try:
        wait_for(lambda: job(root, queued.id).progress > 0.0, 180, "the worker to work on the job", root)
        worker_id, pid = worker_of(root, job(root, queued.id).lease_owner)
        assert cmdline(pid)[-2:] == ["--exit-with-pid", str(owner.pid)]  # the app passed its own pid
    finally:
        kill(owner)
    try:
        assert_exits(pid, root)
    finally:
        terminate(pid)
    assert_handed_back(root, queued.id, worker_id)
    with Store.open(root) as store:
        assert store.list_influence_runs(limit=10) == []  # no partial result
    log = (root / LOG_FILE).read_text()
    assert f"owner process {owner.pid} exited" in log and f"job {queued.id} released" in log


def test_a_job_that_reaches_no_step_is_handed_back_and_the_worker_exits(tmp_path: Path):
    """A handler inside one long step (no progress callback) cannot stop by itself: the worker hands its
    job back and ends the process, as a crash would, so the handler never finishes or stores."""
    root, marker = tmp_path / "ws", tmp_path / "step-finished"
    owner = start_owner(root, keep=False, modules="lifecycle_handlers")
    job_id = enqueue_step(root, seconds=600.0, marker=marker)
    try:
        wait_for(lambda: job(root, job_id).status == "running", 180, "the worker to claim the job", root)
        worker_id, pid = worker_of(root, job(root, job_id).lease_owner)
    finally:
        kill(owner)
    try:
        assert_exits(pid, root)
    finally:
        terminate(pid)
    assert_handed_back(root, job_id, worker_id)
    assert not marker.exists()
    assert f"job {job_id} handed back: owner process {owner.pid} exited" in (root / LOG_FILE).read_text()


def test_kept_worker_outlives_the_dashboard_and_keeps_serving(tmp_path: Path):
    root, marker = tmp_path / "ws", tmp_path / "step-finished"
    owner = start_owner(root, keep=True, modules="lifecycle_handlers")
    pid = None
    try:
        try:
            wait_for(lambda: registered(root), 180, "the worker to register", root)
            worker_id, pid = worker_of(root)
            assert "--exit-with-pid" not in cmdline(pid)
        finally:
            kill(owner)
        job_id = enqueue_step(root, seconds=0.1, marker=marker)  # queued after the owner died
        wait_for(lambda: job(root, job_id).status == "done", 120, "the kept worker to run a job", root)
        assert marker.exists() and pid_running(pid)
        assert worker_of(root) == (worker_id, pid)  # still heartbeating as running
    finally:
        if pid is not None:
            terminate(pid)


# ---- the sidebar says which -------------------------------------------------------------------------
@pytest.fixture
def app_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An unprepared workspace for the app (the sidebar is drawn either way); stops the workers that
    the app, running in this process, started for it."""
    root = tmp_path / "app-ws"
    monkeypatch.setenv("FASTIF_WORKSPACE", str(root))
    monkeypatch.setenv("FASTIF_WORKER_DEVICES", "cpu:1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    st.cache_data.clear()
    yield root
    for pid in app_workers(root):
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)


def app_workers(root: Path) -> list[int]:
    """Pids of this process's children that serve ``root`` (the workers the app started)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            argv = cmdline(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and "fastif_core" in argv and str(root) in argv:
            found.append(int(stat.parent.name))
    return found


def sidebar_text(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    at = AppTest.from_file(str(REPO / "app" / "dashboard.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    return "\n".join(c.value for c in at.sidebar.caption)


def test_sidebar_says_whether_the_worker_stops_with_the_app(app_root, monkeypatch):
    monkeypatch.delenv("FASTIF_KEEP_WORKER", raising=False)
    text = sidebar_text(monkeypatch, FASTIF_AUTOSTART_WORKER="1")
    assert "Started by this app; stops with it" in text and "kept running" not in text
    (pid,) = app_workers(app_root)
    assert cmdline(pid)[-2:] == ["--exit-with-pid", str(os.getpid())]
    os.kill(pid, signal.SIGTERM)
    os.waitpid(pid, 0)

    text = sidebar_text(monkeypatch, FASTIF_KEEP_WORKER="1")  # the next worker it starts is kept
    assert "kept running after the app exits (`FASTIF_KEEP_WORKER=1`)" in text and "stops with it" not in text
    (pid,) = app_workers(app_root)
    assert "--exit-with-pid" not in cmdline(pid)


def test_sidebar_names_a_worker_started_elsewhere(app_root, monkeypatch):
    with Store.open(app_root) as store:  # a worker on another host registered for this workspace
        store.worker_heartbeat("other-host:1:abc", host="other-host", pid=1, devices=["cpu"])
    text = sidebar_text(monkeypatch, FASTIF_AUTOSTART_WORKER="1")
    assert "Not started by this app; keeps running after the app exits." in text
    assert app_workers(app_root) == []  # it started none
