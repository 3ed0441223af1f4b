"""Liveness of the ranks of a device group, so that a dead or hung peer costs a bounded wait, not a day.

Every rank bumps a counter in the group's rendezvous store (a ``TCPStore``) every ``bound / 6`` s from a
daemon thread. Ranks never wait inside a collective for a slow peer: before each collective they meet
at a store barrier (:meth:`Peers.barrier`), and while waiting there they watch the other ranks'
counters. A peer whose counter has not moved for ``bound`` seconds is lost: :class:`GroupLost` is
raised and the group must be rebuilt. The collective itself then only moves data between ranks that
are all present, so the process-group timeout can be short too (:func:`collective_timeout`).

Only the store is used (no clocks are compared across machines): a waiter notes, on its own monotonic
clock, when each peer's counter last changed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta

import torch.distributed as dist

MIN_COLLECTIVE_S = 30.0  # a collective among present ranks moves at most s_test: never time out faster


class GroupLost(RuntimeError):
    """A rank of the device group stopped responding (dead, hung or unreachable); the group is unusable.

    Not a FastifError: the job is not at fault and is requeued for a fresh group."""


def collective_timeout(bound_s: float) -> timedelta:
    """The process-group timeout for a liveness bound: collectives only run once every rank arrived."""
    return timedelta(seconds=max(float(bound_s), MIN_COLLECTIVE_S))


class Peers:
    """Heartbeats of this rank and bounded waits on the others, through ``store`` (shared by all ranks)."""

    def __init__(self, store: dist.Store, rank: int, world_size: int, bound_s: float) -> None:
        self.store, self.rank, self.world_size, self.bound_s = store, rank, world_size, float(bound_s)
        self.interval = min(max(self.bound_s / 6, 0.05), 5.0)
        self._lock = threading.Lock()  # one client connection, used by the beat thread and the waiter
        self._seen: dict[int, tuple[int, float]] = {}
        self._arrivals = 0
        self._halt = threading.Event()
        self._op(lambda: store.set(self._arrived_key(rank), "0"))
        self._beat()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"fastif-peers{rank}")
        self._thread.start()

    @staticmethod
    def _beat_key(rank: int) -> str:
        return f"fastif/beat/{rank}"

    @staticmethod
    def _arrived_key(rank: int) -> str:
        return f"fastif/arrived/{rank}"

    def _op(self, fn: Callable[[], object]) -> object:
        with self._lock:
            return fn()

    def _beat(self) -> None:
        self._op(lambda: self.store.add(self._beat_key(self.rank), 1))

    def _run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                self._beat()
            except Exception:  # noqa: BLE001 - the store's host is gone: the peers will notice
                return

    def stop(self) -> None:
        """Stop beating (this rank then looks lost to the others after ``bound_s``)."""
        self._halt.set()

    def silent(self) -> dict[int, float]:
        """Peers whose heartbeat has not moved for ``bound_s``: rank → seconds of silence."""
        now, out = time.monotonic(), {}
        for r in range(self.world_size):
            if r == self.rank:
                continue
            count = int(self._op(lambda r=r: self.store.add(self._beat_key(r), 0)))
            last = self._seen.get(r)
            if last is None or count != last[0]:
                self._seen[r] = (count, now)
            elif now - last[1] > self.bound_s:
                out[r] = now - last[1]
        return out

    def check(self) -> None:
        """Raise :class:`GroupLost` naming the first peer silent for longer than ``bound_s``."""
        lost = self.silent()
        if lost:
            rank, quiet = min(lost.items())
            raise GroupLost(
                f"rank {rank} of {self.world_size} stopped responding ({quiet:.0f} s without a "
                f"heartbeat, bound {self.bound_s:g} s)"
            )

    def barrier(self) -> None:
        """Wait until every rank reached its next barrier (the same count on all ranks), watching liveness."""
        self._arrivals += 1
        n = self._arrivals
        self._op(lambda: self.store.set(self._arrived_key(self.rank), str(n)))
        keys = [self._arrived_key(r) for r in range(self.world_size)]
        pause = 0.0005
        while True:
            counts = self._op(lambda: self.store.multi_get(keys))
            if min(int(c) for c in counts) >= n:
                return
            self.check()
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
