"""Processes on this host (torch-free): whether one with a given id still runs, and the owner process a
worker lives for (``fastif worker --exit-with-pid``). The worker's liveness check, its owner watch and the
prepare's clean-up of stale staging directories all ask here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def pid_running(pid: int) -> bool:
    """Whether a process with this id exists on this host and has not exited (a zombie, exited but not
    yet reaped by its parent, is not running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Linux: the process has exited and waits for its parent to reap it (state ``Z`` in /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no /proc (macOS) or the process just went away: kill(pid, 0) decides
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


@dataclass(frozen=True)
class OwnerProcess:
    """The process a worker lives for (``fastif worker --exit-with-pid PID``): when it has exited, the
    worker stops. Create it first thing in the worker process: when the owner is the worker's parent
    (the dashboard spawned it), "alive" means "still our parent", which neither a reused pid nor an
    unreaped zombie owner can fake; any other owner is checked by pid."""

    pid: int
    is_parent: bool

    @classmethod
    def of(cls, pid: int) -> OwnerProcess:
        return cls(pid=pid, is_parent=os.getppid() == pid)

    def alive(self) -> bool:
        return os.getppid() == self.pid if self.is_parent else pid_running(self.pid)
