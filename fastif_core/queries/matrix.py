"""Influence matrices: ``(M test examples × N training examples)`` for a prepared workspace, computed once,
stored in the store (:mod:`fastif_core.store.matrices`) and read many times (graphs, simulatability).

Columns: the union of the M tests' kNN candidate sets (``k`` of the config), ascending training position,
or every training example (``full=True``). **Value NaN** where a pair is not a candidate of that test
(kNN matrices only): every column is scored for all the tests of a row block at once, but a test's
answer covers only its own k nearest training examples, exactly as its single influence query would;
a full matrix has no NaN.

Computation, per row block of ``row_block`` tests: their test gradients ``V``, ONE batched s_test run
(:func:`fastif_core.engine.solvers.solve_many`: the same s_test each test gets alone with these settings and
seeds), then :func:`fastif_core.engine.scoring.score_many` over candidate chunks of ``col_block`` columns. Each
``(row block, column chunk)`` block is stored as soon as it is scored, so a restarted run (the same
request, e.g. a requeued job) recomputes only the missing blocks; the values are deterministic, so a
resumed matrix equals an uninterrupted one. No ``(N, P)`` tensor exists: s_test is ``(row_block, P)``,
scoring holds one candidate batch. Memory ≈ ``row_block × P × 4`` bytes (the block's S) + one scoring batch
+ the solver's working memory: for ``solver=direct`` (one repetition) the block is solved in place in S, so
only the factor (5.5 GB for B=64 on the 10.8M-parameter MiniLM) is added; the other solvers run
``SOLVE_BLOCK`` = 16 tests at a time (about 6 × 16 × P × 4 bytes: V, the repetition sums, CG's x, r, p).
A larger block scores each column once for more tests (the per-example forward and backward of a
candidate is shared by the block; only the contraction grows with it), so raise it where memory allows:
``--row-block 200`` with the direct preset on a 24 GB CPU machine (S 8.6 GB + factor 5.5 GB), 400 on an
H200.

A kNN matrix whose tests (same order) and settings have a complete **full** matrix stored is read from it
(the candidate pairs' values; no model work), so a full matrix computed once answers every k.

On a device group (``runner``: a worker's group, or ``torchrun ... fastif matrix``) a row block is one
query of the group (:mod:`fastif_core.parallel.spmd`): its tests' repetitions split over the ranks, its
missing columns sharded over them and gathered to rank 0, which stores the chunks; the whole block is
solved at once (no in-place direct solve), so its memory is that of ``row_block`` vectors on every rank.

API: :func:`influence_matrix` -> :class:`MatrixResult`, :func:`matrix_config` (the stored key),
:func:`load_matrix` (read a stored one).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from fastif_core.config import InfluenceConfig
from fastif_core.engine.influence import test_gradients
from fastif_core.engine.scoring import METHODS, score_many
from fastif_core.engine.solvers import expected_cost, prepare_direct, solve_direct_, solve_many
from fastif_core.errors import ConfigError
from fastif_core.jobs import COL_BLOCK, ROW_BLOCK
from fastif_core.progress import Progress, sub_range
from fastif_core.queries.examples import require_example
from fastif_core.queries.influence import Runner, check_request, stored_config
from fastif_core.store import matrices as sm

SOLVE_BLOCK = 16  # tests solved at once inside a row block (the solver's working memory)


@dataclass
class MatrixResult:
    """A stored influence matrix and how it was obtained."""

    matrix_id: int
    model_id: int
    test_ids: list[str]  # row order
    train_ids: list[str]  # column order
    train_positions: list[int]  # column j = training position train_positions[j] (FAISS row)
    values: np.ndarray  # (M, N) float32; NaN = not a kNN candidate of that test
    config: InfluenceConfig
    full: bool
    seconds: dict[str, float]  # this call: knn, test_gradient, s_test, scoring, store_write, read, total
    # total, computed now, found stored, derived_from_full (read from a stored full matrix)
    chunks: dict[str, int] = field(default_factory=dict)
    cached: bool = False  # complete in the store before this call
    peak_memory_mb: dict[str, float] = field(default_factory=dict)  # rss (process), cuda (if used)
    columns_per_rank: list[int] = field(default_factory=list)  # on a device group: columns each rank scored

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.values.shape)  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        """The JSON summary of ``fastif matrix --json`` (no values)."""
        return {
            "matrix_id": self.matrix_id,
            "model_id": self.model_id,
            "shape": list(self.shape),
            "full": self.full,
            "cached": self.cached,
            "seconds": self.seconds,
            "chunks": self.chunks,
            "peak_memory_mb": self.peak_memory_mb,
            "candidate_pairs": int(np.isfinite(self.values).sum()),
            "columns_per_rank": self.columns_per_rank,
            "test_ids": self.test_ids,
            "config": stored_config(self.config),
        }


def matrix_config(cfg: InfluenceConfig, full: bool) -> dict[str, Any]:
    """What a matrix is keyed by besides the model and the test ids: the scoring settings + ``full``."""
    return {**stored_config(replace(cfg, k=None) if full else cfg), "full": bool(full)}


def _check(
    loaded: Any, test_ids: Sequence[str], cfg: InfluenceConfig, row_block: int, col_block: int, method: str
) -> None:
    check_request(loaded.manifest, cfg)
    if not test_ids:
        raise ConfigError("test_ids is empty: give at least one test example id")
    seen = [i for n, i in enumerate(test_ids) if i in test_ids[:n]]
    if seen:
        raise ConfigError(f"test_ids lists {seen[0]!r} twice: each test example once")
    for name, value in (("row_block", row_block), ("col_block", col_block)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}={value!r} is invalid: allowed an integer >= 1")
    if method not in METHODS:
        raise ConfigError(f"method={method!r} is invalid: allowed {', '.join(METHODS)}")


def _columns(loaded: Any, test_ids: Sequence[str], k: int | None) -> tuple[list[int], np.ndarray | None]:
    """``(column positions ascending, candidate mask (M, N) or None for full)``."""
    if k is None:
        return list(range(len(loaded.train_ids))), None
    sets = [loaded.nearest(t, k)[0] for t in test_ids]
    columns = sorted({int(p) for s in sets for p in s})
    where = {p: j for j, p in enumerate(columns)}
    mask = np.zeros((len(test_ids), len(columns)), dtype=bool)
    for m, s in enumerate(sets):
        mask[m, [where[int(p)] for p in s]] = True
    return columns, mask


def candidate_mask(loaded: Any, test_ids: Sequence[str], k: int) -> np.ndarray:
    """``(M, N)`` bool: training position ``i`` is among test ``j``'s ``k`` nearest."""
    columns, mask = _columns(loaded, test_ids, k)
    full = np.zeros((len(test_ids), len(loaded.train_ids)), dtype=bool)
    full[:, np.asarray(columns, dtype=np.int64)] = mask
    return full


@dataclass
class _Clock:
    """Seconds per stage and progress over the work units of the missing blocks."""

    progress: Progress | None
    units: float
    done: float = 0.0
    columns_per_rank: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(
            ("knn", "test_gradient", "s_test", "scoring", "store_write"), 0.0
        )
    )

    def add(self, stage: str, start: float, units: float, message: str) -> float:
        now = time.perf_counter()
        self.seconds[stage] += now - start
        self.done += units
        if self.progress is not None:
            self.progress(min(self.done / max(self.units, 1e-9), 1.0), message)
        return now


def influence_matrix(
    loaded: Any,
    test_ids: Sequence[str],
    cfg: InfluenceConfig,
    *,
    full: bool = False,
    progress: Progress | None = None,
    row_block: int = ROW_BLOCK,
    col_block: int = COL_BLOCK,
    method: str = "auto",
    job_id: int | None = None,
    owner: str | None = None,
    runner: Runner | None = None,
) -> MatrixResult:
    """The influence matrix of ``test_ids`` (rows) on the kNN union or every training example (``full``),
    from the store when complete there, else computed (continuing from any stored blocks) and stored.

    Args:
        loaded: a :class:`~fastif_core.workspace.layout.LoadedWorkspace` (model, training set, index).
        cfg: settings of each test's influence (``k`` = candidates per test; ignored with ``full``).
        progress: ``(fraction, message)`` after every stored block; it may raise to stop (blocks stored
            so far are kept: the next call continues from them).
        row_block, col_block: tests solved together, candidates per stored chunk (a new layout
            restarts an unfinished matrix; a complete one is returned as stored).
        method: the scoring path of :func:`fastif_core.engine.scoring.score_many`.
        job_id, owner: mark the job done with the completion, in one transaction.
        runner: a device group's query (the signature of
            :func:`fastif_core.queries.influence.serial_runner`): each row block on every rank; None = here.

    Raises:
        ConfigError / WorkspaceError: bad settings or an unknown test id, before any computation.
    """
    from fastif_core.store import Store

    start = time.perf_counter()
    cfg = (replace(cfg, k=None) if full else cfg).validate()
    test_ids = [str(t) for t in test_ids]
    _check(loaded, test_ids, cfg, row_block, col_block, method)
    store = Store.open(loaded.root)
    try:
        records = [require_example(store, t, loaded.model_id).to_record() for t in test_ids]
        columns, mask = _columns(loaded, test_ids, cfg.k)
        knn_seconds = time.perf_counter() - start
        info = sm.start_matrix(
            store,
            model_id=loaded.model_id,
            test_ids=test_ids,
            train_positions=columns,
            config=matrix_config(cfg, cfg.k is None),
            full=cfg.k is None,
            row_block=row_block,
            col_block=col_block,
            job_id=job_id,
        )
        cached = info.status == "complete"
        computed, stored, derived, clock = 0, 0, 0, _Clock(progress, 1.0)
        source = None if cached or mask is None else _stored_full(store, loaded.model_id, test_ids, cfg)
        if source is not None:
            derived = _derive(store, info, source, mask)
            stored = len(info.blocks()) - derived
        elif not cached and runner is not None:
            computed, stored, clock = _fill_on_group(
                loaded, store, info, records, cfg, mask, runner, progress
            )
        elif not cached:
            computed, stored, clock = _fill(loaded, store, info, records, cfg, mask, method, progress)
        clock.seconds["knn"] = knn_seconds
        t_read = time.perf_counter()
        values = sm.read_values(store, info.id)
        clock.seconds["read"] = time.perf_counter() - t_read
        clock.seconds["total"] = time.perf_counter() - start
        memory = _peak_memory(loaded.objective.device)
        if not cached:
            timings = {**clock.seconds, "peak_memory_mb": memory, "chunks_computed": computed}
            if clock.columns_per_rank:
                timings["columns_per_rank"] = clock.columns_per_rank
            if source is not None:
                timings["derived_from_matrix"] = source.id
            info = sm.complete_matrix(store, info.id, timings, job_id=job_id, owner=owner)
    finally:
        store.close()
    return MatrixResult(
        info.id,
        info.model_id,
        info.test_ids,
        [loaded.train_ids[p] for p in info.train_positions],
        info.train_positions,
        values,
        cfg,
        info.full,
        clock.seconds,
        {
            "total": len(info.blocks()),
            "computed": computed,
            "found_stored": stored,
            "derived_from_full": derived,
        },
        cached,
        memory,
        clock.columns_per_rank,
    )


def _fill(
    loaded: Any,
    store: Any,
    info: sm.MatrixInfo,
    records: list[Any],
    cfg: InfluenceConfig,
    mask: np.ndarray | None,
    method: str,
    progress: Progress | None,
) -> tuple[int, int, _Clock]:
    """Compute and store every missing block; returns (blocks computed, blocks found stored, clock)."""
    have = sm.stored_chunks(store, info.id)
    todo = [b for b in info.blocks() if b not in have]
    rows = sorted({r for r, _ in todo})
    solve_units = expected_cost(cfg.s_test) * info.row_block
    clock = _Clock(progress, len(rows) * solve_units + sum(4.0 * _width(info, c) for _, c in todo))
    for r0 in rows:
        block_records = records[r0 : r0 + info.row_block]
        s = _block_s_test(loaded, block_records, cfg, clock, solve_units)
        for c0 in [c for r, c in todo if r == r0]:
            _score_chunk(loaded, store, info, s, cfg, mask, method, (r0, c0), clock)
        del s  # free this block's S before the next one is allocated (two would not fit at row block 200)
    return len(todo), len(info.blocks()) - len(todo), clock


def _fill_on_group(
    loaded: Any,
    store: Any,
    info: sm.MatrixInfo,
    records: list[Any],
    cfg: InfluenceConfig,
    mask: np.ndarray | None,
    runner: Runner,
    progress: Progress | None,
) -> tuple[int, int, _Clock]:
    """:func:`_fill` on a device group: each row block's missing columns in one ``runner`` call (every
    test of the block given the same ascending columns, so the result's columns are exactly those), then
    stored chunk by chunk."""
    have = sm.stored_chunks(store, info.id)
    todo = [b for b in info.blocks() if b not in have]
    rows = sorted({r for r, _ in todo})
    clock = _Clock(progress, float(len(rows)))
    for i, r0 in enumerate(rows):
        chunks = [c for r, c in todo if r == r0]
        cols = [p for c0 in chunks for p in info.train_positions[c0 : c0 + _width(info, c0)]]
        batches = [loaded.encode_test(r) for r in records[r0 : r0 + info.row_block]]
        part = sub_range(progress, i / len(rows), (i + 1) / len(rows))
        many = runner(loaded, batches, [cols] * len(batches), cfg, part)
        assert many.columns.tolist() == cols  # the union of equal ascending lists is that list
        for stage in ("test_gradient", "s_test", "scoring"):
            clock.seconds[stage] += float(many.seconds.get(stage, 0.0))
        shards = many.s_test_stats[0].get("columns_per_rank", [len(cols)])  # the serial runner: one rank
        seen = clock.columns_per_rank or [0] * len(shards)
        clock.columns_per_rank = [a + b for a, b in zip(seen, shards, strict=True)]
        values, t0, at = many.values.detach().to(torch.float32).cpu().numpy(), time.perf_counter(), 0
        for c0 in chunks:
            width = _width(info, c0)
            block = values[:, at : at + width]  # (b, width)
            at += width
            if mask is not None:
                block[~mask[r0 : r0 + len(block), c0 : c0 + width]] = np.nan
            sm.save_chunk(store, info.id, r0, c0, block)
        clock.add(
            "store_write", t0, 1.0, f"stored row block {r0}..{r0 + len(batches) - 1} ({len(chunks)} chunks)"
        )
    return len(todo), len(info.blocks()) - len(todo), clock


def _stored_full(
    store: Any, model_id: int, test_ids: Sequence[str], cfg: InfluenceConfig
) -> sm.MatrixInfo | None:
    """The complete full matrix of the same model, test ids (same order) and settings, if one is stored."""
    found = sm.find_matrix(store, model_id, test_ids, matrix_config(cfg, True))
    return found if found is not None and found.status == "complete" else None


def _derive(store: Any, info: sm.MatrixInfo, source: sm.MatrixInfo, mask: np.ndarray) -> int:
    """Fill the kNN matrix ``info`` from the full matrix ``source``: its values at the candidate pairs
    (a test's s_test and each pair's score do not depend on which other columns are computed, so these
    are the values the kNN run would compute, up to float rounding of the batched solve). Returns the
    number of blocks written."""
    values = sm.read_values(store, source.id)[:, info.train_positions]
    values[~mask] = np.nan
    have = sm.stored_chunks(store, info.id)
    todo = [b for b in info.blocks() if b not in have]
    for r0, c0 in todo:
        sm.save_chunk(store, info.id, r0, c0, values[r0 : r0 + info.row_block, c0 : c0 + info.col_block])
    return len(todo)


def _width(info: sm.MatrixInfo, c0: int) -> int:
    return min(info.col_block, len(info.train_positions) - c0)


def _block_s_test(
    loaded: Any, records: list[Any], cfg: InfluenceConfig, clock: _Clock, units: float
) -> torch.Tensor:
    """``S (b, P)`` of one row block: test gradients ``SOLVE_BLOCK`` at a time, written into one ``(b, P)``
    buffer, then solved. ``solver=direct`` with one repetition solves the whole block in place in that
    buffer (:func:`fastif_core.engine.solvers.solve_direct_`: two passes over the factor for all b tests); the
    other solvers run :func:`solve_many` on ``SOLVE_BLOCK`` tests at a time (each test's s_test does not
    depend on the others solved with it), so their working memory is that of ``SOLVE_BLOCK`` vectors."""
    obj, s_cfg = loaded.objective, cfg.s_test
    in_place = s_cfg.solver == "direct" and s_cfg.repeats == 1
    if in_place:  # the factor first: its build memory and the block's S never coexist
        t0 = time.perf_counter()
        prepare_direct(obj, loaded.train, s_cfg)
        clock.add("s_test", t0, 0.0, "direct factor ready")
    out = torch.empty(len(records), obj.num_params, dtype=obj.dtype, device=obj.device)
    for lo in range(0, len(records), SOLVE_BLOCK):
        part = records[lo : lo + SOLVE_BLOCK]
        t0 = time.perf_counter()
        v = test_gradients(obj, [loaded.encode_test(r) for r in part], include_l2=cfg.test_l2)
        t1 = clock.add("test_gradient", t0, 0.0, f"test gradients of tests {lo}..{lo + len(part) - 1}")
        if in_place:
            out[lo : lo + len(part)] = v
            continue
        out[lo : lo + len(part)] = solve_many(obj, v, loaded.train, s_cfg).s_test
        del v
        share = units * len(part) / len(records)
        clock.add("s_test", t1, share, f"s_test of tests {lo}..{lo + len(part) - 1} ({s_cfg.solver})")
    if in_place:
        t1 = time.perf_counter()
        solve_direct_(obj, out, loaded.train, s_cfg)
        clock.add("s_test", t1, units, f"s_test of {len(records)} tests at once (direct, in place)")
    return out


def _score_chunk(
    loaded: Any,
    store: Any,
    info: sm.MatrixInfo,
    s: torch.Tensor,
    cfg: InfluenceConfig,
    mask: np.ndarray | None,
    method: str,
    at: tuple[int, int],
    clock: _Clock,
) -> None:
    """Score one (row block, column chunk) block and store it (NaN at non-candidate pairs)."""
    (r0, c0), width, t0 = at, _width(info, at[1]), time.perf_counter()
    cols = info.train_positions[c0 : c0 + width]
    values = score_many(
        loaded.objective, s, loaded.train, cols, cfg.score_batch_size, include_l2=cfg.train_l2, method=method
    )
    block = values.detach().to(torch.float32).cpu().numpy()
    if mask is not None:
        block[~mask[r0 : r0 + len(block), c0 : c0 + width]] = np.nan
    t1 = clock.add("scoring", t0, 0.0, "")
    sm.save_chunk(store, info.id, r0, c0, block, seconds=t1 - t0)
    done = f"stored block rows {r0}..{r0 + len(block) - 1}, columns {c0}..{c0 + width - 1}"
    clock.add("store_write", t1, 4.0 * width, done)


def _peak_memory(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process (and of CUDA allocations when on a GPU), MiB."""
    out = {"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def load_matrix(root: Any, matrix_id: int) -> tuple[sm.MatrixInfo, np.ndarray]:
    """A stored matrix's description and values ``(M, N)`` (no model needed)."""
    from fastif_core.errors import WorkspaceError
    from fastif_core.store import Store

    store = Store.open(root)
    try:
        info = sm.get_matrix(store, matrix_id)
        if info is None:
            raise WorkspaceError(
                f"influence matrix {matrix_id} does not exist (list them with `fastif matrix --list`)"
            )
        return info, sm.read_values(store, matrix_id)
    finally:
        store.close()
