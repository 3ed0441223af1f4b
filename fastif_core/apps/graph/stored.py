"""Reading a stored graph back: its row, its arrays and the examples its nodes are (text, label,
prediction), and exporting it (``fastif graph --export``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx

from fastif_core.apps.graph import export
from fastif_core.errors import WorkspaceError
from fastif_core.store.graph_files import GraphArrays, load_graph_arrays


@dataclass(frozen=True)
class StoredGraph:
    info: Any  # AppResultInfo of the graphs row
    arrays: GraphArrays
    examples: dict[str, Any]  # node id -> ExampleRow with the graph model's prediction


def load_graph(root: str | Path, graph_id: int) -> StoredGraph:
    """The stored graph ``graph_id`` (WorkspaceError naming how to list graphs when it does not exist)."""
    from fastif_core.store import Store

    with Store.open(root) as store:
        info = store.get_app_result("graph", int(graph_id))
        if info is None:
            known = [g.id for g in store.list_app_results("graph", limit=20)]
            raise WorkspaceError(
                f"graph {graph_id} does not exist in this workspace (stored graphs: {known or 'none'})"
            )
        arrays = load_graph_arrays(root, info.result["arrays"])
        rows = store.get_examples(arrays.test_ids + arrays.train_ids, info.model_id)
    return StoredGraph(info, arrays, {r.id: r for r in rows})


def to_networkx(graph: StoredGraph) -> nx.Graph:
    return export.to_networkx(graph.arrays, list(graph.info.result["slices"]), graph.examples)


def export_graph(root: str | Path, graph_id: int, fmt: str, out: str | Path) -> tuple[Path, nx.Graph]:
    """Write stored graph ``graph_id`` as ``graphml`` or node-link ``json`` to ``out``."""
    if fmt not in export.FORMATS:
        from fastif_core.errors import ConfigError

        raise ConfigError(f"format={fmt!r} is invalid: allowed {' | '.join(export.FORMATS)}")
    g = to_networkx(load_graph(root, graph_id))
    return export.write(g, out, fmt), g
