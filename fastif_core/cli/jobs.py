"""``fastif worker`` (serve the job queue on every device) and ``fastif jobs`` (list, cancel), and the
JSON form of a job that ``fastif submit`` prints too. Heavy modules are imported inside the commands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fastif_core.cli.options import add_workspace_argument, positive_float
from fastif_core.errors import JobError


def add_worker(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="run queued jobs on every visible device (or N CPU processes)",
        description="Serve the workspace's job queue until stopped (SIGTERM/Ctrl-C finish or release the "
        "current job). Under torchrun every rank runs this command; rank 0 talks to the store.",
    )
    add_workspace_argument(p)
    p.add_argument("--devices", default="auto", help="auto (all GPUs, else cpu:1) | cpu:N | cuda:0,cuda:1")
    p.add_argument("--once", action="store_true", help="run the queued jobs, then exit")
    p.add_argument(
        "--poll", type=positive_float, default=1.0, help="seconds between claims while idle (default 1)"
    )
    p.add_argument(
        "--lease-seconds",
        type=positive_float,
        default=60.0,
        help="a job whose worker stops heartbeating for this long is claimed again (default 60)",
    )
    p.add_argument(
        "--exit-with-pid",
        type=int,
        metavar="PID",
        help="stop once process PID has exited, handing the current job back to the queue (the "
        "dashboard passes its own pid); default: run until stopped",
    )
    p.set_defaults(func=cmd_worker)


def cmd_worker(a: argparse.Namespace) -> int:
    import logging

    from fastif_core.store import Store
    from fastif_core.worker.loop import run_worker
    from fastif_core.workspace.layout import require_workspace

    Store.open(require_workspace(a.workspace)).close()  # a typo or a bad database: one line, before any log
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    n = run_worker(
        a.workspace,
        a.devices,
        once=a.once,
        poll=a.poll,
        lease_seconds=a.lease_seconds,
        exit_with_pid=a.exit_with_pid,
    )
    print(f"worker stopped after {n} job(s)", file=sys.stderr)
    return 0


def add_jobs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jobs", help="list queued, running and finished jobs; cancel one")
    add_workspace_argument(p)
    p.add_argument(
        "--status", choices=("queued", "running", "done", "failed", "cancelled"), help="only this status"
    )
    p.add_argument("--limit", type=int, default=20, help="at most this many jobs, newest first (default 20)")
    p.add_argument(
        "--cancel", type=int, metavar="ID", help="cancel job ID (queued: at once; running: next step)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_jobs)


def cmd_jobs(a: argparse.Namespace) -> int:
    from fastif_core.store import Store
    from fastif_core.workspace.layout import require_workspace

    store = Store.open(require_workspace(a.workspace))
    try:
        if a.cancel is not None:
            if store.get_job(a.cancel) is None:
                raise JobError(f"job {a.cancel} does not exist (list jobs with `fastif jobs`)")
            store.cancel_job(a.cancel)
        rows = [job_to_dict(j) for j in store.list_jobs(status=a.status, limit=a.limit)]
    finally:
        store.close()
    if a.json:
        print(json.dumps({"jobs": rows}, indent=2))
        return 0
    for r in rows:
        done = f"{100 * r['progress']:.0f}%"
        print(
            f"{r['id']:>5} {r['kind']:<12} {r['status']:<10} {done:>5} {r['message'] or ''} {r['error'] or ''}"
        )
    return 0


def job_to_dict(job: Any) -> dict[str, Any]:
    keys = (
        "id",
        "kind",
        "status",
        "params",
        "attempts",
        "max_attempts",
        "progress",
        "message",
        "error",
        "result",
        "device",
        "cancel_requested",
    )
    out = {k: getattr(job, k) for k in keys}
    out["created_at"] = job.created_at.isoformat() if job.created_at else None
    out["duration_s"] = job.duration_s
    return out
