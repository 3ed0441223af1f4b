"""The large arrays of an influence graph (edges, layout), one safetensors file per graph under
``<workspace>/graphs/``; the ``graphs`` row names the file (``result["arrays"]``, relative to the
workspace) and holds everything small. Written once, atomically (temporary file, then rename).

Arrays (numpy): ``test_slice`` (M,) int32, ``test_xy`` (M, 2), ``train_pos`` (T,) int64 training-set
positions of the training nodes, ``helpful_xy`` / ``harmful_xy`` (T, 2) (NaN: no edge of that sign),
``edge_test`` / ``edge_train`` (E,) int32 row indices, ``edge_value`` (E,) float32 influence. The
metadata holds the test and training node ids (JSON lists).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastif_core.errors import WorkspaceError

GRAPHS_DIR = "graphs"


@dataclass(frozen=True)
class GraphArrays:
    """A graph's arrays and node ids (see the module docstring for the shapes)."""

    arrays: dict[str, np.ndarray]
    test_ids: list[str]
    train_ids: list[str]  # the training nodes, row t = arrays["train_pos"][t]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]


def save_graph_arrays(root: str | Path, name: str, graph: GraphArrays) -> str:
    """Write ``<root>/graphs/<name>.safetensors``; returns its path relative to ``root``."""
    from safetensors.numpy import save_file

    folder = Path(root) / GRAPHS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    tensors = {k: np.ascontiguousarray(v) for k, v in graph.arrays.items()}
    meta = {"test_ids": json.dumps(graph.test_ids), "train_ids": json.dumps(graph.train_ids)}
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return str(path.relative_to(root))


def load_graph_arrays(root: str | Path, relative: str) -> GraphArrays:
    """The arrays of a stored graph; a WorkspaceError naming the file when it is missing or damaged."""
    from safetensors import safe_open

    path = Path(root) / relative
    if not path.is_file():
        raise WorkspaceError(
            f"{path} does not exist: the graph's arrays were deleted; compute the graph again"
        )
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata()
            arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        return GraphArrays(arrays, json.loads(meta["test_ids"]), json.loads(meta["train_ids"]))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
        raise WorkspaceError(
            f"{path} is not a readable graph file ({type(exc).__name__}): compute the graph again"
        ) from None
