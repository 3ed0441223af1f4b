"""The shape of every progress callback in fastif, and the one helper that maps a stage onto a sub-range.

A progress callback gets ``(fraction in [0, 1], message)``; it may raise to stop the work (a job's
callback raises when the job was cancelled). A stop check is polled between steps.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[float, str], None]  # (fraction in [0, 1], message)
ShouldStop = Callable[[], bool]  # polled between steps: True = stop


def ignore(fraction: float, message: str) -> None:
    """The progress callback that drops every report (for code that always reports)."""


def sub_range(progress: Progress | None, lo: float, hi: float) -> Progress | None:
    """``progress`` with a stage's ``[0, 1]`` (clamped) mapped onto ``[lo, hi]`` of the whole; None stays
    None."""
    if progress is None:
        return None
    return lambda fraction, message: progress(lo + (hi - lo) * min(max(fraction, 0.0), 1.0), message)
