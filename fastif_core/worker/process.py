"""The worker as an operating-system process: is one alive for a workspace, and start one detached (with
``--exit-with-pid``, the owner process whose exit ends it: :class:`fastif_core.processes.OwnerProcess`).

Torch-free on purpose, so the dashboard can call it on every rerun. A worker is alive when it sent a
heartbeat to the store recently and, if it runs on this host, its process still exists.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fastif_core.processes import pid_running

LOG_FILE = "worker.log"  # in the workspace directory


def running(workers: Iterable[Any]) -> list[Any]:
    """Of workers that sent a recent heartbeat (``WorkerInfo`` rows), those still running (a worker on
    another host counts while its heartbeats are recent; one on this host only while its process exists)."""
    host = socket.gethostname()
    return [w for w in workers if w.host != host or pid_running(w.pid)]


def any_alive(workers: Iterable[Any]) -> bool:
    """Of workers that sent a recent heartbeat (``WorkerInfo`` rows), is one still running?"""
    return bool(running(workers))


def worker_alive(workspace: str | Path, within_s: float = 30.0) -> bool:
    """Whether a worker serving this workspace's store sent a heartbeat within ``within_s`` seconds."""
    from fastif_core.store import Store

    with Store.open(workspace) as store:
        return any_alive(store.list_workers(alive_within_s=within_s))


def worker_command(
    workspace: str | Path,
    devices: str = "auto",
    *,
    poll: float = 1.0,
    lease_seconds: float = 60.0,
    once: bool = False,
    exit_with_pid: int | None = None,
) -> list[str]:
    """The command line of a worker process (``python -m fastif_core worker ...``)."""
    cmd = [
        sys.executable,
        "-m",
        "fastif_core",
        "worker",
        "--workspace",
        str(workspace),
        "--devices",
        devices,
        "--poll",
        str(poll),
        "--lease-seconds",
        str(lease_seconds),
    ]
    if exit_with_pid is not None:
        cmd += ["--exit-with-pid", str(exit_with_pid)]
    return cmd + (["--once"] if once else [])


def spawn_worker(workspace: str | Path, devices: str = "auto", **options: Any) -> subprocess.Popen:
    """Start a detached worker (own session: a Ctrl-C in the parent's terminal does not reach it) logging
    to ``<workspace>/worker.log``. ``options``: ``poll``, ``lease_seconds``, ``once``, ``exit_with_pid``
    (the worker stops once that process has exited; without it the worker outlives its parent)."""
    root = Path(workspace)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOG_FILE, "ab") as out:
        return subprocess.Popen(
            worker_command(root, devices, **options),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def start_worker_process(workspace: str | Path, devices: str = "auto", **options: Any) -> int:
    """:func:`spawn_worker`, returning the pid."""
    return spawn_worker(workspace, devices, **options).pid
