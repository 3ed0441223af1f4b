"""Multi-device execution with ``torch.distributed`` (the paper's Fig. 2): gloo on CPU, NCCL on CUDA.

A :class:`ParallelContext` is started once and lives as long as the worker: ranks load the model, data
and objective once (:meth:`ParallelContext.load`) and serve any number of influence queries
(:meth:`ParallelContext.influence_many`; :meth:`ParallelContext.influence` is it with M = 1) with no
process spawn, model copy or rendezvous per query.

Rank 0 is the coordinator (the process that talks to the store); every other rank runs
:meth:`ParallelContext.serve`, a loop that executes the small command dicts rank 0 broadcasts
(``load``, ``call``, ``ping``, ``shutdown``). A ``call`` runs an SPMD body, a module-level function that
every rank gets by reference (pickled, so no module is named in a string); the one influence body is
:func:`fastif_core.parallel.spmd.rank_influence` (repetitions ``t ≡ rank (mod world)``, ONE all-reduce of
all M partial sums, length-balanced candidate shards, one gather to rank 0). A body uses only the public
API of the group: :meth:`~ParallelContext.state`, :meth:`~ParallelContext.all_reduce_sum`,
:meth:`~ParallelContext.all_gather` and :meth:`~ParallelContext.raise_any`.

Devices (``parse_devices``): ``auto`` (all visible GPUs, else ``cpu:1``), ``cpu`` / ``cpu:N`` (N gloo
processes on this machine), ``cuda`` (all GPUs), ``cuda:0,cuda:1`` (one NCCL rank per listed GPU).
Rank 0 runs in the calling process; ranks 1..N-1 are spawned and rendezvous once through a TCPStore on
127.0.0.1. :attr:`ParallelContext.devices` lists every rank's real device (gathered under torchrun).

A dead or hung rank costs at most ``timeout_s`` (the worker passes its job lease): ranks meet at a store
barrier before each collective and watch each other's heartbeats there (:mod:`fastif_core.parallel.peers`); a
rank silent for ``timeout_s`` raises :class:`~fastif_core.parallel.peers.GroupLost` on the others, and the group
is unusable from then on (:meth:`ParallelContext.alive` is False; the worker requeues the job and exits).

Across machines, launch every rank with ``torchrun``; ``ParallelContext.start`` then reads ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` and uses ``cuda:LOCAL_RANK`` (or the CPU)::

    # on each of 2 machines with 4 GPUs: the same workspace path on every machine (a shared file system)
    # and a store every machine reaches (FASTIF_DB_URL=postgresql://...)
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST0:29500 \\
        -m fastif_core worker --workspace /shared/ws

Only rank 0 claims jobs, searches the kNN index and writes results; the other ranks only read the
model files and the training examples (loaders get ``rank`` and followers load no index or features). A torchrun launch uses the GPUs only when every local rank gets
one (``LOCAL_WORLD_SIZE`` <= visible GPUs), else gloo on the CPU for all ranks.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from fastif_core.config import InfluenceConfig
from fastif_core.device import cuda_count
from fastif_core.engine.examples import Batch, Examples
from fastif_core.engine.influence import InfluenceResult, ManyInfluence
from fastif_core.engine.objective import Objective
from fastif_core.errors import ConfigError, FastifError, JobError, describe_error, rebuild_error
from fastif_core.parallel import spmd
from fastif_core.parallel.peers import GroupLost, Peers, collective_timeout
from fastif_core.progress import Progress, ShouldStop

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT_S = 300.0  # a rank silent this long is lost (the worker passes its lease instead)


@dataclass(frozen=True)
class DeviceSpec:
    """The devices of a group: one rank per entry (``'cpu'`` entries for gloo, ``'cuda:i'`` for NCCL)."""

    devices: tuple[str, ...]

    @property
    def world_size(self) -> int:
        return len(self.devices)

    @property
    def backend(self) -> str:
        return "nccl" if self.devices[0].startswith("cuda") else "gloo"

    def __str__(self) -> str:
        if self.backend == "gloo":
            return f"cpu:{self.world_size}"
        return ",".join(self.devices)


def parse_devices(spec: str = "auto") -> DeviceSpec:
    """``auto`` | ``cpu`` | ``cpu:N`` | ``cuda`` | ``cuda:0,cuda:1`` → the ranks' devices.

    Raises:
        ConfigError: malformed string, N < 1, a GPU that is not visible, or a GPU listed twice.
    """
    text = spec.strip().lower().replace(" ", "")
    allowed = "auto, cpu, cpu:N (N >= 1), cuda, or a list such as cuda:0,cuda:1"
    gpus = cuda_count()
    if text == "auto":
        return DeviceSpec(tuple(f"cuda:{i}" for i in range(gpus)) if gpus else ("cpu",))
    if text == "cpu":
        return DeviceSpec(("cpu",))
    if m := re.fullmatch(r"cpu:(\d+)", text):
        n = int(m.group(1))
        if n < 1:
            raise ConfigError(f"devices={spec!r} is invalid: cpu:N needs N >= 1")
        return DeviceSpec(("cpu",) * n)
    if text == "cuda" and not gpus:
        raise ConfigError(f"devices={spec!r}: no CUDA device is visible here; use auto or cpu:N")
    names = [f"cuda:{i}" for i in range(gpus)] if text == "cuda" else text.split(",")
    if not all(re.fullmatch(r"cuda:\d+", n) for n in names):
        raise ConfigError(f"devices={spec!r} is invalid: allowed {allowed}")
    missing = [n for n in names if int(n.split(":")[1]) >= gpus]
    if missing:
        raise ConfigError(
            f"devices={spec!r}: {missing} not visible ({gpus} CUDA device(s) here); allowed {allowed}"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"devices={spec!r} lists a GPU twice: one rank per GPU")
    return DeviceSpec(tuple(names))


def launched_by_torchrun() -> bool:
    """True when this process is one rank of a ``torchrun`` launch (its env variables are set)."""
    return all(v in os.environ for v in TORCHRUN_VARS)


@dataclass
class RankState:
    """What each rank keeps between queries: the objective (model on this rank's device) and the
    training examples (``train`` row i = training position i, as in the kNN index)."""

    objective: Objective
    train: Examples
    info: dict[str, Any] = field(default_factory=dict)


class ParallelContext:
    """A process group of ``world_size`` ranks; rank 0 is the caller, the others serve its commands.

    Use :meth:`start` (spawns local ranks, or joins a ``torchrun`` launch); rank 0 calls :meth:`load`,
    :meth:`influence` and finally :meth:`close`; other ranks call :meth:`serve`.
    """

    def __init__(self, rank: int, world_size: int, device: str, spec: str) -> None:
        self.rank, self.world_size, self.device, self.spec = rank, world_size, device, spec
        self.devices: tuple[str, ...] = (device,) * world_size  # every rank's device (set by start)
        self._procs: list[Any] = []  # spawned ranks 1..N-1 (none under torchrun)
        self._states: dict[str, RankState] = {}
        self._store: dist.Store | None = None  # the rendezvous store of spawned ranks (rank 0 hosts it)
        self._peers: Peers | None = None
        self._lost: str | None = None  # why the group became unusable
        self._threads: int | None = None
        self._lock = threading.Lock()
        self.closed = False

    @property
    def is_coordinator(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # ---- lifecycle -------------------------------------------------------------------------------

    @classmethod
    def start(cls, devices: str = "auto", *, timeout_s: float = DEFAULT_TIMEOUT_S) -> ParallelContext:
        """Start the group once: under ``torchrun`` from its env, else rank 0 here + spawned ranks.

        ``timeout_s``: a rank that sends no heartbeat for this long is lost (:class:`GroupLost`)."""
        if timeout_s <= 0:
            raise ConfigError(f"timeout_s={timeout_s} is invalid: allowed > 0")
        if launched_by_torchrun():
            return cls._from_env(timeout_s)
        spec = parse_devices(devices)
        ctx = cls(0, spec.world_size, spec.devices[0], str(spec))
        ctx.devices = spec.devices
        ctx._threads = _share_cpu(spec)
        if spec.world_size == 1:
            _set_cuda(spec.devices[0])
            return ctx
        store = dist.TCPStore(
            "127.0.0.1",
            0,
            spec.world_size,
            is_master=True,
            wait_for_workers=False,
            timeout=collective_timeout(timeout_s),
        )
        ctx._store = store
        spawn = mp.get_context("spawn")
        for rank in range(1, spec.world_size):
            args = (rank, spec, store.port, timeout_s, os.getpid())
            proc = spawn.Process(target=_follower_main, args=args, daemon=True, name=f"fastif-rank{rank}")
            proc.start()
            ctx._procs.append(proc)
        try:
            ctx._await_ranks(store)
            _set_cuda(spec.devices[0])
            ctx._join(spec.backend, store, timeout_s)
        except BaseException:
            ctx.close()
            raise
        return ctx

    @classmethod
    def _from_env(cls, timeout_s: float) -> ParallelContext:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local, per_node = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        device = f"cuda:{local}" if cuda_count() >= per_node else "cpu"  # one backend for all ranks
        _set_cuda(device)
        store, rank, world = next(
            dist.rendezvous("env://", rank, world, timeout=collective_timeout(timeout_s))
        )
        ctx = cls(rank, world, device, f"torchrun:{world}")
        ctx._join("nccl" if device.startswith("cuda") else "gloo", store, timeout_s)
        box: list[Any] = [None] * world
        ctx._collective(lambda: dist.all_gather_object(box, device))
        ctx.devices = tuple(box)
        return ctx

    def _join(self, backend: str, store: dist.Store, timeout_s: float) -> None:
        """Every rank: join the process group and start the heartbeats (keys fresh per torchrun restart)."""
        store.set_timeout(collective_timeout(timeout_s))
        dist.init_process_group(
            backend,
            store=dist.PrefixStore("default_pg", store),
            rank=self.rank,
            world_size=self.world_size,
            timeout=collective_timeout(timeout_s),
        )
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        self._peers = Peers(
            dist.PrefixStore(f"fastif{restart}", store), self.rank, self.world_size, timeout_s
        )

    def _await_ranks(self, store: dist.Store) -> None:
        """Wait until every spawned rank checked in; a rank that died first is an error, not a hang."""
        keys = [f"ready/{r}" for r in range(1, self.world_size)]
        while not store.check(keys):
            dead = [(p.name, p.exitcode) for p in self._procs if not p.is_alive()]
            if dead:
                raise JobError(
                    f"device group {self.spec}: {dead[0][0]} exited (code {dead[0][1]}) before joining; "
                    "a script that starts cpu:N must guard its code with `if __name__ == '__main__':`"
                )
            time.sleep(0.05)

    def alive(self) -> bool:
        """False once a rank exited, stopped sending heartbeats for ``timeout_s`` or a collective failed."""
        if self.closed or self._lost is not None or not all(p.is_alive() for p in self._procs):
            return False
        if self._peers is not None and self.is_coordinator:
            with contextlib.suppress(Exception):
                if lost := self._peers.silent():
                    self._lost = f"rank {min(lost)} stopped responding ({max(lost.values()):.0f} s)"
            return self._lost is None
        return True

    def close(self) -> None:
        """Rank 0: tell the other ranks to exit, tear the group down, reap the spawned processes."""
        if self.closed:
            return
        if self.is_coordinator and self.distributed and self.alive():
            with contextlib.suppress(Exception):  # a dead peer must not block shutdown
                self._broadcast({"op": "shutdown"})
        self.closed = True
        if self._peers is not None:
            self._peers.stop()
        if dist.is_initialized():
            dist.destroy_process_group()
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()  # SIGKILL: also ends a stopped (SIGSTOP) or hung rank
                proc.join(timeout=10)
        if self._threads is not None:
            torch.set_num_threads(self._threads)

    def __enter__(self) -> ParallelContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- commands (rank 0) -----------------------------------------------------------------------

    def load(self, key: str, loader: Callable[..., Any], **kwargs: Any) -> RankState:
        """Build (once per key) each rank's state with ``loader(device=..., rank=..., **kwargs)`` on every
        rank (rank 0 alone may load what only it uses, such as the kNN index).

        ``loader`` is a module-level function (pickled by reference to the other ranks) returning a
        :class:`RankState` or ``(objective, train)``; ``kwargs`` must be picklable. A key already loaded is reused without any work.
        """
        if key in self._states:
            return self._states[key]
        if not callable(loader):
            raise ConfigError(
                f"loader={loader!r} is invalid: give a module-level function (device, rank, **kwargs)"
            )
        self._command({"op": "load", "key": key, "loader": loader, "kwargs": kwargs})
        return self._states[key]

    def influence(
        self,
        key: str,
        test_batch: Batch,
        candidates: Sequence[int] | None,
        cfg: InfluenceConfig,
        progress: Progress | None = None,
        should_stop: ShouldStop | None = None,
    ) -> InfluenceResult:
        """Influence of ``candidates`` (training rows; None = all) on one test example, on all ranks:
        :meth:`influence_many` with M = 1.

        Raises:
            QueryCancelled: ``should_stop()`` returned True between steps.
            FastifError: a rank failed (e.g. LissaDivergenceError), re-raised here with its message.
        """
        rows = None if candidates is None else [list(candidates)]
        return self.influence_many(key, [test_batch], rows, cfg, progress, should_stop).result(0)

    def influence_many(
        self,
        key: str,
        test_batches: Sequence[Batch],
        candidates: Sequence[Sequence[int]] | None,
        cfg: InfluenceConfig,
        progress: Progress | None = None,
        should_stop: ShouldStop | None = None,
    ) -> ManyInfluence:
        """Influence of each test's ``candidates[m]`` (None = every training row) on ``test_batches[m]``,
        on all ranks (:func:`fastif_core.parallel.spmd.rank_influence`); raises as :meth:`influence`."""
        if key not in self._states:
            raise JobError(f"state {key!r} is not loaded on the group: call load() first")
        command = spmd.payload(
            list(test_batches), None if candidates is None else [list(c) for c in candidates], cfg
        )
        return self.call(spmd.rank_influence, key, command, progress=progress, should_stop=should_stop)

    def call(
        self,
        fn: Callable[..., Any],
        key: str,
        payload: dict[str, Any],
        progress: Progress | None = None,
        should_stop: ShouldStop | None = None,
    ) -> Any:
        """Run ``fn`` (a module-level function, called as ``fn(ctx, cmd, progress, should_stop)``) on
        every rank with the loaded state ``key`` and the picklable ``payload``; returns rank 0's result.
        Other engine modules add SPMD commands this way (e.g. :mod:`fastif_core.parallel.spmd`)."""
        if key not in self._states:
            raise JobError(f"state {key!r} is not loaded on the group: call load() first")
        cmd = {**payload, "op": "call", "fn": fn, "key": key}
        return self._command(cmd, progress=progress, should_stop=should_stop)

    # ---- the API of an SPMD body (all ranks) ---------------------------------------------------------

    def state(self, key: str) -> RankState:
        """This rank's loaded state ``key`` (what :meth:`load` built)."""
        if key not in self._states:
            raise JobError(f"state {key!r} is not loaded on rank {self.rank}: call load() first")
        return self._states[key]

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """``tensor`` summed over every rank, in place (bounded wait); the tensor itself on one rank."""
        if self.distributed:
            self._collective(lambda: dist.all_reduce(tensor, op=dist.ReduceOp.SUM))
        return tensor

    def all_gather(self, payload: Any) -> list[Any]:
        """Every rank's picklable ``payload``, in rank order (bounded wait)."""
        if not self.distributed:
            return [payload]
        out: list[Any] = [None] * self.world_size
        self._collective(lambda: dist.all_gather_object(out, payload))
        return out

    def raise_any(self, error: BaseException | None) -> None:
        """Collective: every rank learns whether any failed; rank 0 raises the first error, the others
        a JobError (so that every rank leaves the body at the same point)."""
        errors = self.all_gather(describe_error(error))
        first = next(((r, e) for r, e in enumerate(errors) if e is not None), None)
        if first is not None and self.is_coordinator:
            raise error if error is not None else rebuild_error(*first)
        if first is not None:
            raise JobError("a rank failed")

    # ---- execution (all ranks) -------------------------------------------------------------------

    def serve(self) -> None:
        """Follower loop: receive and run rank 0's commands until ``shutdown``.

        Raises:
            GroupLost: another rank (e.g. rank 0) stopped responding, or a collective failed.
        """
        while True:
            cmd = self._broadcast(None)
            if cmd["op"] == "shutdown":
                return
            with contextlib.suppress(FastifError):  # rank 0 reports the error; keep serving
                self._execute(cmd, None, None)

    def _command(self, cmd: dict[str, Any], **hooks: Any) -> Any:
        if self.closed:
            raise JobError("the device group is closed")
        if self._lost is not None:
            raise GroupLost(f"device group {self.spec} is unusable: {self._lost}")
        with self._lock:
            if self.distributed:
                self._broadcast(cmd)
            return self._execute(cmd, hooks.get("progress"), hooks.get("should_stop"))

    def _collective(self, fn: Callable[[], Any]) -> Any:
        """Run one collective once every rank is at it (bounded wait); a failure makes the group lost."""
        if self._peers is None:
            return fn()
        try:
            self._peers.barrier()
            return fn()
        except GroupLost as exc:
            self._lost = str(exc)
            raise
        except RuntimeError as exc:  # gloo / NCCL: a peer vanished during the collective, or its timeout
            self._lost = f"a collective failed: {exc}"
            raise GroupLost(f"device group {self.spec}: {self._lost}") from exc

    def _broadcast(self, cmd: dict[str, Any] | None) -> dict[str, Any]:
        box = [cmd]
        self._collective(lambda: dist.broadcast_object_list(box, src=0))
        return box[0]

    def _execute(self, cmd: dict[str, Any], progress: Progress | None, should_stop: ShouldStop | None) -> Any:
        if cmd["op"] == "ping":
            return None
        if cmd["op"] == "load":
            return self._run_load(cmd)
        if cmd["op"] == "call":
            return cmd["fn"](self, cmd, progress, should_stop)
        raise JobError(f"unknown group command {cmd['op']!r}")

    def _run_load(self, cmd: dict[str, Any]) -> None:
        error, state = None, None
        try:
            built = cmd["loader"](device=self.device, rank=self.rank, **cmd["kwargs"])
            state = built if isinstance(built, RankState) else RankState(*built)
        except Exception as exc:  # noqa: BLE001 - collected and re-raised on rank 0
            error = exc
        self.raise_any(error)  # a rank failed: no rank changes its states, so all keep the same keys
        self._states = {cmd["key"]: state}  # one state at a time: models are large


def _share_cpu(spec: DeviceSpec) -> int | None:
    """Give each CPU rank ``cores // world`` threads (returns the old count to restore, or None)."""
    if spec.backend != "gloo" or spec.world_size == 1:
        return None
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec.world_size))
    return old


def _set_cuda(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))


def _follower_main(rank: int, spec: DeviceSpec, port: int, timeout_s: float, parent: int) -> None:
    """Entry point of a spawned rank: join the group, serve rank 0, exit with it."""
    _share_cpu(spec)
    device = spec.devices[rank]
    _set_cuda(device)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    store = dist.TCPStore(
        "127.0.0.1", port, spec.world_size, is_master=False, timeout=collective_timeout(timeout_s)
    )
    store.set(f"ready/{rank}", "1")
    ctx = ParallelContext(rank, spec.world_size, device, str(spec))
    ctx.devices = spec.devices
    ctx._join(spec.backend, store, timeout_s)
    try:
        ctx.serve()
    finally:
        ctx._peers.stop()
        dist.destroy_process_group()


def _watch_parent(parent: int) -> None:
    """Exit this rank as soon as rank 0's process is gone (e.g. ``kill -9``): no orphans."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)
