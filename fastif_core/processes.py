"""Processes on this host (torch-free): whether one with a given id still runs. The worker's liveness
check and the prepare's clean-up of stale staging directories both ask it."""

from __future__ import annotations

import os


def pid_running(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
