"""Sketch indexes in a workspace: per model, the training set's gradient sketches as one memory-mapped
N × d array (and the Gauss-Newton rows the sketch-space curvature is built from), written in resumable
blocks. The math is :mod:`fastif_core.engine.sketch`; this module is its storage and build loop.

Layout::

    W/sketches/<model_id>/<key digest>/meta.json     the key (model id, checkpoint hash, training-data hash,
                                                     settings), k, d, N, R, status building | complete
    W/sketches/<model_id>/<key digest>/sketches.npy  (N, d) float32 | float16: φ_i = Π ∇ℓ(z_i), row = FAISS position
    W/sketches/<model_id>/<key digest>/rows.npy      (N, R, d) float32: Gauss-Newton rows ψ_ir (R = C, or 1 for mc)
    W/sketches/<model_id>/<key digest>/blocks/<b>    marker: rows [b·block, (b+1)·block) are written and flushed

A block's rows are flushed before its marker is created, so a build killed at any point resumes with the
blocks whose marker exists and recomputes only the others (Monte-Carlo labels are seeded per block, so a
resumed build equals an uninterrupted one). Ranks of a device group build disjoint blocks
(``b ≡ rank mod world``) into the same files. :func:`open_index` refuses an index whose key (model id,
checkpoint hash, training-data hash, settings) is not the one asked for: sketches of one model are never
used for another.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastif_core.config import SketchConfig, config_hash
from fastif_core.errors import WorkspaceError
from fastif_core.progress import Progress, ShouldStop

FORMAT = 1
_MODEL_HASHES: dict[tuple[str, int], str] = {}


def train_hash(loaded: Any) -> str:
    """SHA-256 of the training set as the model sees it: ids in position order, token ids, types, labels."""
    t = loaded.train
    digest = hashlib.sha256(json.dumps(list(loaded.train_ids)).encode())
    digest.update(json.dumps(t.input_ids).encode())
    digest.update(json.dumps(t.token_type_ids).encode())
    digest.update(t.labels.numpy().astype("<i8").tobytes())
    return digest.hexdigest()


def model_hash(loaded: Any) -> str:
    """SHA-256 of the served checkpoint's files (computed once per process and model)."""
    from fastif_core.workspace.layout import WorkspacePaths
    from fastif_core.workspace.versions import checkpoint_hash

    key = (str(Path(loaded.root).resolve()), int(loaded.model_id))
    if key not in _MODEL_HASHES:
        paths = WorkspacePaths.of(loaded.root, loaded.manifest)
        _MODEL_HASHES[key] = checkpoint_hash(paths.model_dir(loaded.model_id))
    return _MODEL_HASHES[key]


def resolved_k(objective: Any, cfg: SketchConfig) -> int:
    from fastif_core.engine.sketch import k_for_dim

    return k_for_dim(objective, cfg.dim)


def index_key(loaded: Any, cfg: SketchConfig) -> dict[str, Any]:
    """What an index was built from; equal keys = the same values."""
    return {
        "format": FORMAT,
        "model_id": int(loaded.model_id),
        "model_hash": model_hash(loaded),
        "train_hash": train_hash(loaded),
        "num_train": len(loaded.train),
        "settings": {**cfg.key_fields(), "k": resolved_k(loaded.objective, cfg)},
    }


def index_dir(root: str | Path, key: dict[str, Any]) -> Path:
    return Path(root) / "sketches" / str(key["model_id"]) / config_hash(key)


def make_sketch_for(objective: Any, key: dict[str, Any]) -> Any:
    """The projection an index was built with (deterministic from its seeded settings)."""
    from fastif_core.engine.sketch import make_sketch

    s = key["settings"]
    return make_sketch(objective, s["k"], s["projection"], s["small"], s["seed"])


@dataclass
class SketchIndex:
    """An index on disk: meta and read-only memory maps of the sketches ``(N, d)`` and rows ``(N, R, d)``."""

    path: Path
    meta: dict[str, Any]

    @property
    def key(self) -> dict[str, Any]:
        return self.meta["key"]

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def complete(self) -> bool:
        return self.meta.get("status") == "complete"

    def sketches(self) -> np.ndarray:
        """``(N, d)`` memory map (copy-on-write: torch views of it need a writable buffer; the file is never
        written through it)."""
        return np.load(self.path / "sketches.npy", mmap_mode="c")

    def rows(self) -> np.ndarray:
        """``(N, R, d)`` memory map (copy-on-write, as :meth:`sketches`)."""
        return np.load(self.path / "rows.npy", mmap_mode="c")

    def blocks_done(self) -> set[int]:
        folder = self.path / "blocks"
        return {int(p.name) for p in folder.iterdir()} if folder.is_dir() else set()

    def num_blocks(self) -> int:
        return -(-int(self.meta["num_train"]) // int(self.meta["block"]))

    def describe(self) -> dict[str, Any]:
        """The JSON of ``fastif sketch``."""
        size = sum(p.stat().st_size for p in (self.path / "sketches.npy", self.path / "rows.npy"))
        return {
            "path": str(self.path),
            "model_id": self.key["model_id"],
            "status": self.meta["status"],
            "dim": self.dim,
            "k": self.key["settings"]["k"],
            "num_train": self.meta["num_train"],
            "rows_per_example": self.meta["rows_per_example"],
            "settings": self.key["settings"],
            "blocks": {"done": len(self.blocks_done()), "total": self.num_blocks()},
            "disk_bytes": size,
            "seconds": self.meta.get("seconds", {}),
        }


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    tmp = path / f"meta.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    tmp.replace(path / "meta.json")


def _read_meta(path: Path) -> dict[str, Any] | None:
    file = path / "meta.json"
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise WorkspaceError(
            f"{file}: corrupt sketch meta ({exc.msg}); delete {path} and run `fastif sketch`"
        ) from None


def open_index(path: Path, key: dict[str, Any]) -> SketchIndex | None:
    """The index at ``path`` if it exists (None otherwise), checked to be the one ``key`` describes.

    Raises:
        WorkspaceError: the index was built for another model, checkpoint, training set or settings.
    """
    meta = _read_meta(path)
    if meta is None:
        return None
    found = meta.get("key", {})
    for field, what in (
        ("model_id", "model"),
        ("model_hash", "checkpoint"),
        ("train_hash", "training data"),
        ("num_train", "training set size"),
        ("settings", "sketch settings"),
        ("format", "format"),
    ):
        if found.get(field) != key.get(field):
            raise WorkspaceError(
                f"{path}: these sketches were built for another {what} ({field}={found.get(field)!r}, this "
                f"workspace has {key.get(field)!r}): delete the directory and run `fastif sketch`"
            )
    return SketchIndex(path, meta)


def create_index(loaded: Any, cfg: SketchConfig) -> SketchIndex:
    """The index of ``(loaded's model, cfg)``: opened when it exists (to resume or read), else created with
    empty arrays and status ``building``."""
    key = index_key(loaded, cfg)
    path = index_dir(loaded.root, key)
    found = open_index(path, key)
    if found is not None:
        return found
    sketch = make_sketch_for(loaded.objective, key)
    n, outputs = len(loaded.train), int(len(loaded.label_names))
    r = outputs if cfg.rows == "exact" else 1
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    (tmp / "blocks").mkdir(parents=True, exist_ok=True)
    np.lib.format.open_memmap(tmp / "sketches.npy", mode="w+", dtype=cfg.dtype, shape=(n, sketch.dim)).flush()
    np.lib.format.open_memmap(tmp / "rows.npy", mode="w+", dtype="float32", shape=(n, r, sketch.dim)).flush()
    meta = {
        "key": key,
        "dim": sketch.dim,
        "num_train": n,
        "rows_per_example": r,
        "block": cfg.block,
        "batch_size": cfg.batch_size,
        "status": "building",
        "sketch": sketch.describe(),
        "seconds": {},
    }
    _write_meta(tmp, meta)
    if not path.exists():
        with contextlib.suppress(OSError):  # a concurrent creator won: use its index
            tmp.rename(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    found = open_index(path, key)
    assert found is not None
    return found


def build_blocks(
    loaded: Any,
    indexes: list[SketchIndex],
    blocks: list[int],
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> list[int]:
    """Compute and store ``blocks`` of every index (one hooked backward per output for all of them: a
    stacked sketch); blocks already marked in every index are skipped. Returns the blocks computed."""
    from fastif_core.engine.examples import length_sorted_chunks, to_device
    from fastif_core.engine.sketch import (
        Sketch,
        build_rows,
        jacobian_sketches,
        model_labels,
        output_terms,
        rows_from_jacobian,
    )

    obj, train, first = loaded.objective, loaded.train, indexes[0]
    if any(
        i.meta["block"] != first.meta["block"] or i.meta["num_train"] != first.meta["num_train"]
        for i in indexes
    ):
        raise ValueError("indexes built together need the same block size and training set")
    sketches = [make_sketch_for(obj, i.key) for i in indexes]
    stacked = Sketch.stacked(sketches)
    outs = [
        (np.load(i.path / "sketches.npy", mmap_mode="r+"), np.load(i.path / "rows.npy", mmap_mode="r+"))
        for i in indexes
    ]
    block, n, done = int(first.meta["block"]), int(first.meta["num_train"]), []
    marked = [i.blocks_done() for i in indexes]
    todo = [b for b in blocks if any(b not in m for m in marked)]
    for j, b in enumerate(todo):
        if should_stop is not None and should_stop():
            break
        if all(
            (i.path / "blocks" / str(b)).exists() for i in indexes
        ):  # another process finished it meanwhile
            continue
        lo, hi = b * block, min((b + 1) * block, n)
        gens = [
            torch.Generator().manual_seed(int(i.key["settings"]["seed"]) * 1_000_003 + b) for i in indexes
        ]
        for chunk in length_sorted_chunks(range(lo, hi), train.lengths(), int(first.meta["batch_size"])):
            batch = to_device(train.collate(chunk), obj.device)
            pos = np.asarray(chunk)
            if len(indexes) == 1:
                parts = [build_rows(obj, sketches[0], batch, first.key["settings"]["rows"], gens[0])]
            else:
                dl, roots = output_terms(obj, batch)
                psi, parts, at = jacobian_sketches(obj, stacked, batch, dl.shape[1]), [], 0  # (B, C, Σd)
                for i, sk, gen in zip(indexes, sketches, gens, strict=True):
                    exact = i.key["settings"]["rows"] == "exact"
                    weights = roots if exact else model_labels(obj, batch, gen).unsqueeze(1)
                    parts.append(rows_from_jacobian(psi[..., at : at + sk.dim], dl, weights))
                    at += sk.dim
            for (phi_out, rows_out), (phi, psi_rows) in zip(outs, parts, strict=True):
                phi_out[pos] = phi.detach().cpu().numpy().astype(phi_out.dtype)
                rows_out[pos] = psi_rows.detach().cpu().numpy().astype(np.float32)
        for index, (phi_out, rows_out) in zip(indexes, outs, strict=True):
            phi_out.flush()
            rows_out.flush()
            (index.path / "blocks" / str(b)).touch()
        done.append(b)
        if progress is not None:
            progress((j + 1) / len(todo), f"sketched block {b + 1}/{first.num_blocks()} ({hi - lo} examples)")
    return done


def finish_index(index: SketchIndex, seconds: float) -> SketchIndex:
    """Mark the index complete once every block is marked (else leave it building)."""
    if len(index.blocks_done()) == index.num_blocks() and not index.complete:
        meta = {**index.meta, "status": "complete", "seconds": {"build": seconds}}
        _write_meta(index.path, meta)
        index = SketchIndex(index.path, meta)
    return index


def build_sketches(
    loaded: Any,
    cfg: SketchConfig,
    *,
    progress: Progress | None = None,
    show_progress: bool = False,
    should_stop: ShouldStop | None = None,
) -> SketchIndex:
    """Build (or finish) the index of ``loaded``'s model with ``cfg`` in this process."""
    cfg.validate()
    t0 = time.perf_counter()
    index = create_index(loaded, cfg)
    if index.complete:
        return index
    bar = _bar(index) if show_progress else None
    report = _chain(progress, bar)
    build_blocks(loaded, [index], list(range(index.num_blocks())), report, should_stop)
    if bar is not None:
        bar.close()
    return finish_index(index, time.perf_counter() - t0 + float(index.meta["seconds"].get("build", 0.0)))


def disk_estimate(loaded: Any, cfg: SketchConfig) -> int:
    """Bytes the index of ``(loaded's model, cfg)`` takes on disk: the sketches and the curvature rows."""
    dim = make_sketch_for(loaded.objective, index_key(loaded, cfg)).dim
    n, r = len(loaded.train), len(loaded.label_names) if cfg.rows == "exact" else 1
    return n * dim * np.dtype(cfg.dtype).itemsize + n * r * dim * 4


def build_within_budget(
    loaded: Any, cfg: SketchConfig, budget_seconds: float, *, show_progress: bool = False
) -> dict[str, Any]:
    """``fastif prepare``'s default: build the index only when it costs at most ``budget_seconds`` (the
    model's own training time). The first missing block is built and timed (kept: a later ``fastif sketch``
    continues from it), the rest is estimated from its seconds per example; the build goes on only within
    the budget. Returns the index's description with ``status`` (``complete`` or ``deferred``),
    ``estimate_seconds`` and ``budget_seconds``."""
    cfg.validate()
    index = create_index(loaded, cfg)
    budget = {"budget_seconds": float(budget_seconds), "estimate_seconds": None}
    if index.complete:
        return {**index.describe(), **budget, "status": "complete"}
    block, n = int(index.meta["block"]), int(index.meta["num_train"])
    missing = [b for b in range(index.num_blocks()) if b not in index.blocks_done()]
    if missing:
        t0 = time.perf_counter()
        build_blocks(loaded, [index], missing[:1])
        probe = time.perf_counter() - t0
        size = [min((b + 1) * block, n) - b * block for b in missing]
        budget["estimate_seconds"] = probe / size[0] * sum(size)
        index.meta["seconds"]["build"] = float(index.meta["seconds"].get("build", 0.0)) + probe
        index.meta["estimate_seconds"] = budget["estimate_seconds"]  # the dashboard's offer shows it
        _write_meta(index.path, index.meta)
        if len(missing) > 1 and budget["estimate_seconds"] > budget_seconds:
            return {**index.describe(), **budget, "status": "deferred"}
    done = build_sketches(loaded, cfg, show_progress=show_progress)  # the rest (or only the finishing)
    return {**done.describe(), **budget, "status": "complete"}


def build_many(
    loaded: Any, cfgs: list[SketchConfig], *, progress: Progress | None = None, show_progress: bool = False
) -> list[SketchIndex]:
    """Several indexes of one model in one pass (a stacked sketch: the backward passes are shared); all
    ``cfgs`` need the same ``block`` and ``batch_size``. Each index is an ordinary one afterwards."""
    t0 = time.perf_counter()
    indexes = [create_index(loaded, c.validate()) for c in cfgs]
    todo = [i for i in indexes if not i.complete]
    if todo:
        bar = _bar(todo[0]) if show_progress else None
        build_blocks(loaded, todo, list(range(todo[0].num_blocks())), _chain(progress, bar))
        if bar is not None:
            bar.close()
    return [finish_index(i, time.perf_counter() - t0) for i in indexes]


def require_index(loaded: Any, cfg: SketchConfig) -> SketchIndex:
    """The complete index for ``(loaded's model, cfg)``, or a WorkspaceError saying how to build it."""
    key = index_key(loaded, cfg)
    index = open_index(index_dir(loaded.root, key), key)
    if index is None or not index.complete:
        state = "is not complete" if index is not None else "does not exist"
        raise WorkspaceError(
            f"the sketch index of model {loaded.model_id} (dim {cfg.dim}, {cfg.projection}) {state}: "
            f"run `fastif sketch --workspace {loaded.root} --dim {cfg.dim}`"
        )
    return index


def _bar(index: SketchIndex) -> Any:
    from tqdm.auto import tqdm

    total = index.num_blocks()
    return tqdm(total=total, initial=len(index.blocks_done()), desc="sketch", unit="block", leave=False)


def _chain(progress: Progress | None, bar: Any) -> Progress | None:
    if progress is None and bar is None:
        return None

    def report(fraction: float, message: str) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(message[:60], refresh=True)
        if progress is not None:
            progress(fraction, message)

    return report
