"""FAISS nearest-neighbour pre-filter over training features (L2, as in FastIF).

``KnnIndex.build(features, cfg)`` makes an exact ``IndexFlatL2`` for ``cfg.index == 'Flat'`` or any FAISS
factory string (``'IVF1024,Flat'``, ``'HNSW32'``, ...) for approximate search at scale. With
``cfg.use_gpu`` and a faiss-gpu build with visible GPUs, a GPU replica answers the searches; the CPU
index is kept as the master copy for saving, reconstructing stored vectors and very large ``k``.

Distances are **squared** L2 distances, exactly as FAISS returns them (``‖q - x‖²``); positions are row
numbers of the feature matrix. An approximate index can find fewer than ``k`` neighbours in the cells it
probes (FAISS pads with position -1): those queries are answered again by exact search, with a logged
warning and ``last_fallback`` set, so a -1 never leaves this module.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from torch import Tensor

from fastif_core.config import KnnConfig
from fastif_core.errors import ConfigError, WorkspaceError

log = logging.getLogger(__name__)

GPU_MAX_K = 2048  # faiss GPU k-selection limit; larger k is answered by the CPU master copy
QUERY_BATCH = 4096  # queries per FAISS call


EXACT_NEIGHBOURS_MAX = 100_000  # from this many training examples on, "auto" lists neighbours with an IVF
# IVF cells probed for the stored lists (at N = 396,000: recall@10 0.962 against the exact ones)
NEIGHBOUR_NPROBE = 32


def auto_nlist(n: int) -> int:
    """About 4·√N IVF cells, with at least 39 training vectors per cell (FAISS's own minimum)."""
    return max(1, min(int(round(4 * n**0.5)), n // 39))


def neighbour_index_config(setting: str, num_train: int, workspace: KnnConfig) -> KnnConfig | None:
    """The index ``fastif prepare`` searches each example's stored neighbour list with (``setting`` is
    ``PrepareConfig.neighbors_index``); None = the workspace's own index. Exact search of every example
    against every training example is N² work (870 s at N = 400,000 on 2 cores), so ``auto`` switches to
    ``IVF<about 4·√N>,Flat`` probed at ``NEIGHBOUR_NPROBE`` cells from ``EXACT_NEIGHBOURS_MAX`` on."""
    if setting == "exact" or (setting == "auto" and num_train < EXACT_NEIGHBOURS_MAX):
        return None
    factory = f"IVF{auto_nlist(num_train)},Flat" if setting == "auto" else setting
    return KnnConfig(index=factory, nprobe=NEIGHBOUR_NPROBE, use_gpu=workspace.use_gpu)


def faiss_gpu_count() -> int:
    """GPUs usable by FAISS: 0 for faiss-cpu builds or machines without CUDA (never raises)."""
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except Exception:  # noqa: BLE001 - a broken driver must read as "no GPU"
        return 0


def _as_matrix(x: Tensor | np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
    """A C-contiguous float32 (N, d) numpy matrix, with a clear error for a wrong shape."""
    arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if arr.ndim != 2 or (dim is not None and arr.shape[1] != dim):
        want = f"(N, {dim})" if dim is not None else "(N, d)"
        raise ConfigError(f"{what} must be a {want} matrix, got shape {tuple(arr.shape)}")
    return np.ascontiguousarray(arr, dtype=np.float32)


class KnnIndex:
    """A FAISS index over the training features; positions are the feature matrix's row numbers."""

    def __init__(self, index: Any, cfg: KnnConfig) -> None:
        self.cfg = cfg
        self.cpu_index = index
        _set_nprobe(index, cfg.nprobe)
        self.gpu_index = _to_gpu(index, cfg) if cfg.use_gpu else None
        self._exact: Any | None = None  # flat copy for queries the approximate index cannot fill
        self.last_fallback = 0  # queries of the last search answered by exact search

    @classmethod
    def build(cls, features: Tensor | np.ndarray, cfg: KnnConfig | None = None) -> KnnIndex:
        """Index ``features`` (N, d) float32; approximate indexes are trained on the features first."""
        cfg = (cfg or KnnConfig()).validate()
        x = _as_matrix(features, "features")  # (N, d)
        if x.shape[0] == 0:
            raise ConfigError("cannot build a kNN index over 0 training examples")
        index = _make_index(x, cfg.index)
        index.add(x)
        return cls(index, cfg)

    @property
    def ntotal(self) -> int:
        """Number of indexed training vectors N."""
        return int(self.cpu_index.ntotal)

    @property
    def dim(self) -> int:
        """Feature dimension d."""
        return int(self.cpu_index.d)

    @property
    def on_gpu(self) -> bool:
        """True when searches run on a GPU replica."""
        return self.gpu_index is not None

    def _check_k(self, k: int) -> None:
        if not 1 <= k <= self.ntotal:
            raise ConfigError(f"k={k} is out of range: allowed 1..N where N={self.ntotal} training examples")

    def search(self, queries: Tensor | np.ndarray, k: int) -> tuple[Tensor, Tensor]:
        """The ``k`` nearest training rows of each query: squared-L2 ``dist`` (Q, k) float32, ``pos`` (Q, k) int64."""
        self._check_k(k)
        q = _as_matrix(queries, "queries", self.dim)  # (Q, d)
        index = self.gpu_index if self.gpu_index is not None and k <= GPU_MAX_K else self.cpu_index
        dists, positions = [], []
        for start in range(0, q.shape[0], QUERY_BATCH):
            d, p = index.search(q[start : start + QUERY_BATCH], k)
            dists.append(d)
            positions.append(p)
        if not dists:
            return torch.empty(0, k), torch.empty(0, k, dtype=torch.long)
        dist, pos = np.concatenate(dists), np.concatenate(positions)
        self._fill_shortfall(q, k, dist, pos)
        return torch.from_numpy(dist), torch.from_numpy(pos).long()

    def _fill_shortfall(self, q: np.ndarray, k: int, dist: np.ndarray, pos: np.ndarray) -> None:
        """Rows where the probed cells held fewer than ``k`` vectors (-1 padding) get an exact answer."""
        short = np.flatnonzero((pos < 0).any(axis=1))
        self.last_fallback = int(short.size)
        if not short.size:
            return
        if self._exact is None:
            self._exact = faiss.IndexFlatL2(self.dim)
            self._exact.add(np.ascontiguousarray(self.vectors(torch.arange(self.ntotal)).numpy()))
        log.warning(
            "index %r (nprobe=%d) found fewer than k=%d neighbours for %d of %d queries: "
            "answered those by exact search (raise nprobe or use fewer cells)",
            self.cfg.index,
            self.cfg.nprobe,
            k,
            short.size,
            q.shape[0],
        )
        dist[short], pos[short] = self._exact.search(q[short], k)

    def search_by_position(
        self, positions: Sequence[int] | Tensor, k: int, exclude_self: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Search with stored training vectors as queries (e.g. a training example's neighbours).

        With ``exclude_self`` each query's own row is dropped (``k + 1`` are searched, so ``k < N``).
        """
        rows = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
        if rows.numel() and not (int(rows.min()) >= 0 and int(rows.max()) < self.ntotal):
            raise ConfigError(f"positions must lie in 0..{self.ntotal - 1}, got {rows.min()}..{rows.max()}")
        queries = self.vectors(rows)  # (Q, d)
        if not exclude_self:
            return self.search(queries, k)
        self._check_k(k + 1)
        dist, pos = self.search(queries, k + 1)
        keep = pos != rows[:, None]  # (Q, k + 1)
        keep[keep.all(dim=1), -1] = False  # self not found (ties): drop the farthest instead
        return dist[keep].reshape(-1, k), pos[keep].reshape(-1, k)

    def vectors(self, positions: Tensor) -> Tensor:
        """The stored vectors (Q, d) at ``positions`` (exact for Flat/IVF-Flat, decoded for compressed indexes)."""
        keys = np.ascontiguousarray(positions.numpy(), dtype=np.int64)
        try:
            return torch.from_numpy(self.cpu_index.reconstruct_batch(keys))
        except RuntimeError:
            faiss.extract_index_ivf(self.cpu_index).make_direct_map()
            return torch.from_numpy(self.cpu_index.reconstruct_batch(keys))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the (CPU) index with ``faiss.write_index``, atomically."""
        target = Path(path)
        tmp = target.with_name(f".{target.name}.tmp")
        faiss.write_index(self.cpu_index, str(tmp))
        os.replace(tmp, target)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike, cfg: KnnConfig | None = None) -> KnnIndex:
        """Read an index written by :meth:`save`; ``cfg`` sets nprobe and GPU use."""
        if not Path(path).is_file():
            raise WorkspaceError(f"kNN index {path} does not exist (run prepare)")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise WorkspaceError(f"{path} is not a readable FAISS index: {exc}") from exc
        return cls(index, (cfg or KnnConfig()).validate())


def check_factory(factory: str, dim: int = 32) -> None:
    """ConfigError now (not after fine-tuning) when FAISS cannot parse the factory string at all."""
    if factory.strip() == "Flat":
        return
    try:
        faiss.index_factory(dim, factory, faiss.METRIC_L2)
    except RuntimeError as exc:
        text = " ".join(str(exc).split())
        if "could not parse" not in text:  # parsable; its sizes are checked against the features later
            return
        why = text[text.index("could not parse") :][:120]
        raise ConfigError(
            f"index={factory!r} is not a FAISS index factory string ({why}): allowed e.g. 'Flat', "
            "'IVF1024,Flat', 'HNSW32'"
        ) from None


def _make_index(x: np.ndarray, factory: str) -> Any:
    """An empty index for ``factory`` ('Flat' -> exact IndexFlatL2), trained on ``x`` when it needs training."""
    n, d = x.shape
    if factory.strip() == "Flat":
        return faiss.IndexFlatL2(d)
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_L2)
        if not index.is_trained:
            index.train(x)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1][:200]
        raise ConfigError(
            f"index={factory!r} cannot be built over N={n} vectors of dim {d} ({first}); "
            "approximate indexes need more training vectors than cells: use fewer cells or index='Flat'"
        ) from exc
    return index


def _set_nprobe(index: Any, nprobe: int) -> None:
    """Set nprobe on IVF indexes (also when wrapped, e.g. 'PCA64,IVF256,Flat'); other indexes ignore it."""
    with contextlib.suppress(RuntimeError, AttributeError):
        faiss.extract_index_ivf(index).nprobe = nprobe


def _to_gpu(index: Any, cfg: KnnConfig) -> Any | None:
    """A GPU replica of ``index`` on all visible GPUs, or None (no faiss-gpu / no GPU / unsupported type)."""
    if faiss_gpu_count() == 0:
        return None
    try:
        options = faiss.GpuMultipleClonerOptions()
        gpu = faiss.index_cpu_to_all_gpus(index, co=options)
    except (RuntimeError, AttributeError) as exc:
        log.warning("index %r stays on the CPU: faiss cannot move it to the GPU (%s)", cfg.index, exc)
        return None
    with contextlib.suppress(RuntimeError, AttributeError):
        faiss.GpuParameterSpace().set_index_parameter(gpu, "nprobe", cfg.nprobe)
    return gpu
