"""Influence from a sketch index (``fastif influence --method sketch``): the test example's sketch, one
small solve in sketch space, one product over all N training sketches.

:class:`SketchSession` is what a process keeps per (model, index, curvature, μ): the memory-mapped
sketches, the factored sketch-space curvature (:mod:`fastif_core.engine.sketch_curvature`) and, once
asked for, every training example's self-influence (RelatIF, the Browse page's sort). One session at a
time is kept (:func:`session`), like the direct solver's factor: a worker factors once per model.
:func:`sketch_scores` is the query for M test batches (one is M = 1); :func:`influence_sketch_query` the
workspace pipeline with the exact path's JSON (``helpful``, ``harmful``, ``num_candidates`` = N,
``seconds``) plus ``method``, ``dimension`` and ``sketch`` (the index's model id and key).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fastif_core.config import InfluenceConfig, SketchConfig, SketchQueryConfig, config_hash, to_dict
from fastif_core.workspace.sketches import SketchIndex, make_sketch_for, require_index

_ROWS = 2048  # training examples per block read from the memory maps
_SESSION: dict[tuple, SketchSession] = {}


@dataclass
class SketchSession:
    """One index with its projection and its curvature, ready for queries: either the factor (``solve``
    per query) or, preconditioned, every training example's ``H⁻¹φ`` kept next to the index (no factor)."""

    index: SketchIndex
    sketch: Any  # engine.sketch.Sketch
    factor: Any  # engine.sketch_curvature factor; None when preconditioned rows answer
    phi: np.ndarray  # (N, d) memory map
    regularizer: Tensor  # (d,) Π ∇(wd·Σθ²): the L2 term's gradient in sketch space
    seconds: dict[str, float]
    backend: str
    curvature_examples: int
    curvature_key: str = ""  # curvature, examples and μ: names the stored self-influences
    solved: np.ndarray | None = None  # (N, d) memory map of H⁻¹φ_i (preconditioned)
    solved_regularizer: Tensor | None = None  # (d,) float64 H⁻¹ Π∇(wd·Σθ²)
    _self: Tensor | None = field(default=None, repr=False)

    def phi_blocks(self) -> list[Tensor]:
        return _blocks(self.phi)

    def solved_blocks(self) -> list[Tensor]:
        assert self.solved is not None
        return _blocks(self.solved)

    def self_influence(self) -> Tensor:
        """``φ_iᵀ H⁻¹ φ_i`` ``(N,)`` float64 of every training example (computed once per index, curvature
        and μ, and kept next to the index as ``self_influence-<key>.npy``: the Browse page sorts by it)."""
        from fastif_core.engine.sketch_curvature import paired_self_influences, self_influences

        if self._self is None:
            path = self.index.path / f"self_influence-{self.curvature_key}.npy"
            if path.is_file():
                self._self = torch.from_numpy(np.load(path))
            else:
                t0 = time.perf_counter()
                if self.solved is not None:
                    self._self = paired_self_influences(self.phi_blocks(), self.solved_blocks())
                else:
                    self._self = self_influences(self.factor, [b.float() for b in self.phi_blocks()])
                self.seconds["self_influence"] = time.perf_counter() - t0
                _save(path, self._self.numpy())
        return self._self


def _blocks(array: np.ndarray) -> list[Tensor]:
    return [torch.from_numpy(np.asarray(array[lo : lo + _ROWS])) for lo in range(0, len(array), _ROWS)]


def _save(path: Path, value: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npy")
    np.save(tmp, value)
    tmp.replace(path)


def _precondition(
    index: SketchIndex, factor: Any, reg: Tensor, name: str, meta: dict[str, Any]
) -> tuple[np.ndarray, Tensor]:
    """Write ``H⁻¹φ_i`` of every training sketch (the sketches' dtype), ``H⁻¹ reg`` and ``meta`` next to the
    index as ``<name>.npy``, ``<name>-regularizer.npy``, ``<name>.json``; the rows are renamed into place
    last, so a reader that finds ``<name>.npy`` finds the rest (never half a file)."""
    from fastif_core.engine.sketch_curvature import preconditioned

    phi = index.sketches()
    tmp = index.path / f"{name}.{os.getpid()}.tmp.npy"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=phi.dtype, shape=phi.shape)
    lo = 0
    for block in preconditioned(factor, [b.float() for b in _blocks(phi)]):
        out[lo : lo + len(block)] = block.numpy().astype(phi.dtype)
        lo += len(block)
    out.flush()
    del out
    solved_reg = factor.solve(reg[None])[0]
    _save(index.path / f"{name}-regularizer.npy", solved_reg.numpy())
    (index.path / f"{name}.json").write_text(json.dumps(meta))
    tmp.replace(index.path / f"{name}.npy")
    return np.load(index.path / f"{name}.npy", mmap_mode="c"), solved_reg


def _curvature_rows(index: SketchIndex, positions: list[int] | None) -> tuple[Tensor, int]:
    """The Gauss-Newton rows of ``positions`` (None = all), zero rows dropped: ``(R, d)`` float32, and n."""
    rows = index.rows()
    n = len(rows) if positions is None else len(positions)
    parts = []
    for lo in range(0, n, _ROWS):
        sel = slice(lo, lo + _ROWS) if positions is None else np.asarray(sorted(positions)[lo : lo + _ROWS])
        block = torch.from_numpy(np.ascontiguousarray(rows[sel])).reshape(-1, rows.shape[-1])
        parts.append(block[block.abs().amax(dim=1) > 0])
    return torch.cat(parts), n


def build_factor(
    index: SketchIndex,
    sketch: Any,
    objective: Any,
    qcfg: SketchQueryConfig,
    mu: float,
    positions: list[int] | None,
) -> tuple[Any, str, int]:
    """The factored sketch-space curvature: ``(factor, backend, examples)``."""
    from fastif_core.engine import sketch_curvature as sc

    if qcfg.curvature == "identity":
        return sc.IdentityFactor(), "identity", 0
    rows, n = _curvature_rows(index, positions)
    blocks = sketch.damping_blocks(objective, mu)
    backend = sc.choose_backend(sketch.dim, len(rows))
    if backend == "primal":
        gram = sc.GramAccumulator(sketch.dim)
        for lo in range(0, len(rows), 4 * _ROWS):
            gram.add(rows[lo : lo + 4 * _ROWS])
        return sc.PrimalFactor.build(gram.gram, n, blocks), backend, n
    return sc.DualFactor.build(rows, n, blocks), backend, n


def seeded_positions(num_train: int, cfg: InfluenceConfig) -> list[int]:
    """The exact path's curvature batch: the seeded batch of ``s_test.batch_size`` (repetition 0)."""
    from fastif_core.engine.examples import sample_indices

    return sample_indices(num_train, cfg.s_test.batch_size, torch.Generator().manual_seed(cfg.s_test.seed))


def session(loaded: Any, qcfg: SketchQueryConfig, cfg: InfluenceConfig) -> SketchSession:
    """The kept session for this model, index, curvature and μ (built now when it is not the kept one)."""
    from fastif_core.engine.per_example import regularizer_gradient

    qcfg.validate()
    mu = float(cfg.s_test.effective_damping or 0.0)
    index = require_index(loaded, qcfg.sketch)
    positions = seeded_positions(len(loaded.train), cfg) if qcfg.examples == "seeded" else None
    key = (
        str(index.path),
        qcfg.curvature,
        mu,
        None if positions is None else tuple(positions),
        id(loaded.objective),
        qcfg.precondition,
    )
    if key in _SESSION:
        return _SESSION[key]
    _SESSION.clear()
    t0 = time.perf_counter()
    sketch = make_sketch_for(loaded.objective, index.key)
    reg = sketch.project(loaded.objective, regularizer_gradient(loaded.objective)[None])[0]
    ckey = config_hash(
        {"curvature": qcfg.curvature, "examples": qcfg.examples, "mu": mu, "positions": positions}
    )
    name = f"preconditioned-{ckey}"
    keep = qcfg.precondition and qcfg.curvature != "identity"  # identity: H⁻¹φ = φ, nothing to keep
    if keep and (index.path / f"{name}.npy").is_file():  # kept by an earlier process: no factor at all
        solved = np.load(index.path / f"{name}.npy", mmap_mode="c")
        solved_reg = torch.from_numpy(np.load(index.path / f"{name}-regularizer.npy"))
        seconds = {"factor": 0.0, "load": time.perf_counter() - t0}
        meta = json.loads((index.path / f"{name}.json").read_text())
        _SESSION[key] = SketchSession(
            index, sketch, None, index.sketches(), reg, seconds, meta["backend"], meta["examples"], ckey
        )
        _SESSION[key].solved, _SESSION[key].solved_regularizer = solved, solved_reg
        return _SESSION[key]
    factor, backend, n = build_factor(index, sketch, loaded.objective, qcfg, mu, positions)
    seconds = {"factor": time.perf_counter() - t0}
    sess = SketchSession(index, sketch, factor, index.sketches(), reg, seconds, backend, n, ckey)
    if keep:
        t1 = time.perf_counter()
        meta = {"backend": backend, "examples": n}
        sess.solved, sess.solved_regularizer = _precondition(index, factor, reg, name, meta)
        sess.factor = None  # the preconditioned rows answer every query: free the factor's memory
        seconds["precondition"] = time.perf_counter() - t1
    _SESSION[key] = sess
    return sess


def ready_for_queries(loaded: Any, cfg: SketchConfig) -> dict[str, float]:
    """After a build: the default query's curvature (Gauss-Newton over all N, the default preset's μ)
    factored and ``H⁻¹φ`` kept next to the index, so the first click is one product; its seconds."""
    sess = session(loaded, SketchQueryConfig(sketch=cfg), InfluenceConfig())
    return dict(sess.seconds)


def sketch_scores(
    sess: SketchSession, objective: Any, batches: list[dict], cfg: InfluenceConfig, relative: bool = False
) -> tuple[Tensor, dict[str, float]]:
    """Influence ``(M, N)`` of every training example on each test batch, and the seconds split."""
    from fastif_core.engine.sketch import sketch_gradients
    from fastif_core.engine.sketch_curvature import relative as relatif
    from fastif_core.engine.sketch_curvature import scores

    t0 = time.perf_counter()
    x = torch.cat([sketch_gradients(objective, sess.sketch, b) for b in batches]).detach().cpu()  # (M, d)
    if cfg.test_l2:
        x = x + sess.regularizer.to(x)
    t1 = time.perf_counter()
    if sess.solved is not None:  # preconditioned: −x · H⁻¹φ_i, no solve
        t2 = time.perf_counter()
        values = scores(sess.solved_blocks(), x.float()).double()
        if cfg.train_l2:
            values -= (x.double() @ sess.solved_regularizer).unsqueeze(1)
    else:
        solved = sess.factor.solve(x)  # (M, d) float64
        t2 = time.perf_counter()
        values = scores(sess.phi_blocks(), solved.float()).double()  # (M, N)
        if cfg.train_l2:
            values -= (solved @ sess.regularizer.double()).unsqueeze(1)
    if relative:
        values = relatif(values, sess.self_influence())
    t3 = time.perf_counter()
    return values, {"test_gradient": t1 - t0, "s_test": t2 - t1, "scoring": t3 - t2, "total": t3 - t0}


def query_key(loaded: Any, cfg: InfluenceConfig, qcfg: SketchQueryConfig) -> str:
    """The cache key of a sketch run: the influence settings (all N), the query settings and the index key."""
    from fastif_core.queries.influence import stored_config
    from fastif_core.workspace.sketches import index_key

    return config_hash(
        {
            "method": "sketch",
            "influence": stored_config(replace(cfg, k=None)),
            "sketch_query": qcfg.key_fields(),
            "index": index_key(loaded, qcfg.sketch),
        }
    )


def influence_sketch_query(
    root: str | Path,
    example_id: str,
    cfg: InfluenceConfig,
    qcfg: SketchQueryConfig,
    *,
    device: str = "cpu",
    loaded: Any = None,
    job_id: int | None = None,
    owner: str | None = None,
) -> dict[str, Any]:
    """Most helpful / harmful of all N training examples from the sketches; stored like an exact run
    (answered from the store when asked again for the same model, index and settings)."""
    from fastif_core.queries.examples import open_store, require_example
    from fastif_core.queries.influence import run_to_dict, stored_config
    from fastif_core.workspace.layout import LoadedWorkspace

    store, manifest = open_store(root)
    try:
        model_id = int(manifest["model_id"])
        example = require_example(store, example_id, model_id)
        loaded = loaded or LoadedWorkspace.load(root, device, search=False)
        key = query_key(loaded, cfg, qcfg)
        extra = {"method": "sketch", "dimension": None, "sketch": None}
        found = store.find_influence_run(model_id, example_id, key)
        if found is not None:
            out = run_to_dict(store.get_influence_run(found.id), cfg.top, cached=True)
            return {**out, **extra, **out["s_test"].get("sketch_json", {})}
        t0 = time.perf_counter()
        sess = session(loaded, qcfg, cfg)
        built = time.perf_counter() - t0
        values, seconds = sketch_scores(
            sess, loaded.objective, [loaded.encode_test(example.to_record())], cfg, qcfg.relative
        )
        seconds = {"knn": 0.0, "factor": built, **seconds, "total": built + seconds["total"]}
        info = {
            "method": "sketch",
            "dimension": sess.sketch.dim,
            "sketch": {
                "model_id": sess.index.key["model_id"],
                "key": sess.index.path.name,
                **qcfg.sketch.key_fields(),
                "k": sess.sketch.k,
                "curvature": qcfg.curvature,
                "examples": qcfg.examples,
                "relative": qcfg.relative,
                "backend": sess.backend,
            },
        }
        config = {
            **stored_config(replace(cfg, k=None)),
            "method": "sketch",
            "sketch_query": to_dict(qcfg),
            "cache_key": key,
        }
        stats = {"solver": "sketch", "curvature": qcfg.curvature, "dim": sess.sketch.dim, "sketch_json": info}
        scores = list(zip(loaded.train_ids, values[0].tolist(), strict=True))
        run_id = store.save_influence_run(
            model_id,
            example_id,
            config,
            scores,
            num_candidates=len(scores),
            timings=seconds,
            s_test_stats=stats,
            job_id=job_id,
            owner=owner,
            config_hash=key,
        )
        out = run_to_dict(store.get_influence_run(run_id), cfg.top, cached=False)
        return {**out, **info, "warnings": []}
    finally:
        store.close()
