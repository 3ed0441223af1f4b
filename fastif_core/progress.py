"""The shape of every progress callback in fastif, and the one helper that maps a stage onto a sub-range.

A progress callback gets ``(fraction in [0, 1], message)``; it may raise to stop the work (a job's
callback raises when the job was cancelled). A stop check is polled between steps.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[float, str], None]  # (fraction in [0, 1], message)
ShouldStop = Callable[[], bool]  # polled between steps: True = stop


def sub_range(progress: Progress | None, lo: float, hi: float) -> Progress | None:
    """``progress`` with a stage's ``[0, 1]`` mapped onto ``[lo, hi]`` of the whole (None stays None)."""
    if progress is None:
        return None
    return lambda fraction, message: progress(lo + (hi - lo) * fraction, message)
