"""Wall seconds and peak memory of the phases of a run (``fastif prepare``'s manifest, ``fastif bench``).

The peak RSS of a phase is read from Linux's high-water mark: ``VmHWM`` in ``/proc/self/status`` is reset
to the current RSS by writing ``5`` to ``/proc/self/clear_refs`` when the phase starts, so the peak is the
phase's own, not the process's so far. Where that is not available (not Linux) the peak is
``resource.getrusage``'s ``ru_maxrss``, the process's peak so far: a phase that stays below an earlier
peak then reads as no growth (``source`` says which). One clock per process: phases may nest, but two
threads timing phases at once would reset each other's high-water mark.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
MB = 2**20


def _status_kb(key: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), or None where there is none."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _ru_maxrss_mb() -> float:
    """The process's peak RSS so far (``ru_maxrss`` is in kB on Linux, in bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak / 1024.0


def rss_mb() -> float:
    """The current RSS in MiB (the peak so far where the current value cannot be read)."""
    kb = _status_kb("VmRSS")
    return kb / 1024.0 if kb is not None else _ru_maxrss_mb()


def _reset_peak() -> bool:
    """Reset the high-water mark to the current RSS; False where the kernel does not offer it."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


def _peak_mb(resettable: bool) -> float:
    kb = _status_kb("VmHWM") if resettable else None
    return kb / 1024.0 if kb is not None else _ru_maxrss_mb()


@dataclass
class _Open:
    name: str
    start: float
    start_rss: float
    peak: float  # the largest high-water mark seen so far inside this phase (folded in from inner phases)


@dataclass
class PhaseClock:
    """Seconds and peak RSS per named phase: ``with clock.phase("featurise"): ...``; :meth:`as_dict` gives
    ``{name: {seconds, peak_rss_mb, peak_growth_mb}}`` (a repeated name adds its seconds and keeps the
    larger peak)."""

    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    _stack: list[_Open] = field(default_factory=list)
    _resettable: bool | None = None

    @property
    def source(self) -> str:
        """Where the peaks come from: ``vmhwm`` (per phase) or ``ru_maxrss`` (the process's peak so far)."""
        if self._resettable is None:
            self._resettable = _reset_peak()
        return "vmhwm" if self._resettable else "ru_maxrss"

    def _fold(self) -> None:
        """Carry the high-water mark into every open phase before it is reset."""
        peak = _peak_mb(self.source == "vmhwm")
        for p in self._stack:
            p.peak = max(p.peak, peak)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase ``name`` (its seconds and the RSS peak while it ran)."""
        self._fold()
        resettable = self.source == "vmhwm" and _reset_peak()
        start_rss = rss_mb()
        self._stack.append(_Open(name, time.perf_counter(), start_rss, _peak_mb(resettable)))
        try:
            yield
        finally:
            self._fold()
            done = self._stack.pop()
            self._record(done, time.perf_counter() - done.start)

    def _record(self, p: _Open, seconds: float) -> None:
        old = self.phases.get(p.name, {})
        peak = max(p.peak, old.get("peak_rss_mb", 0.0))
        self.phases[p.name] = {
            "seconds": old.get("seconds", 0.0) + seconds,
            "peak_rss_mb": peak,
            "peak_growth_mb": max(max(p.peak - p.start_rss, 0.0), old.get("peak_growth_mb", 0.0)),
        }

    def as_dict(self) -> dict[str, dict[str, float]]:
        """The finished phases, in the order each first finished (an inner phase before its outer one)."""
        return {name: dict(v) for name, v in self.phases.items()}


def measured(fn: Any, name: str = "call") -> tuple[Any, dict[str, float]]:
    """``(fn(), {seconds, peak_rss_mb, peak_growth_mb})`` of one call."""
    clock = PhaseClock()
    with clock.phase(name):
        out = fn()
    return out, clock.phases[name]


def size_mb(path: Path) -> float | None:
    """Bytes on disk of a file or a directory tree in MiB (apparent sizes); None when it does not exist."""
    if path.is_file():
        return path.stat().st_size / MB
    if not path.is_dir():
        return None
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / MB
