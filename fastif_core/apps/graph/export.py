"""The bipartite influence graph as a networkx graph, written as GraphML or node-link JSON.

Nodes are example ids with attributes ``id``, ``kind`` (``test`` / ``train``), ``slice`` (test nodes;
"" for training nodes), ``label``, ``predicted``, ``text`` (premise and hypothesis) and, where defined,
the layout positions ``x``, ``y`` (test nodes), ``helpful_x``, ``helpful_y``, ``harmful_x``, ``harmful_y``
(training nodes). Edges join a training node and a test node; ``weight`` is the influence
(negative = helpful, positive = harmful).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from fastif_core.errors import ConfigError
from fastif_core.store.graph_files import GraphArrays

FORMATS = ("graphml", "json")


def _text(row: Any) -> str:
    return f"{row.premise} || {row.hypothesis}" if row is not None else ""


def _xy(prefix: str, xy: np.ndarray) -> dict[str, float]:
    x, y = float(xy[0]), float(xy[1])
    return {} if math.isnan(x) else {f"{prefix}x": x, f"{prefix}y": y}


def to_networkx(graph: GraphArrays, slices: list[str], examples: dict[str, Any]) -> nx.Graph:
    """The graph with node attributes from ``examples`` (id → ``ExampleRow`` with its prediction)."""
    g = nx.Graph()
    for j, node in enumerate(graph.test_ids):
        row = examples.get(node)
        g.add_node(
            node,
            id=node,
            kind="test",
            slice=slices[int(graph["test_slice"][j])],
            label=row.label if row else "",
            predicted=(row.predicted or "") if row else "",
            text=_text(row),
            **_xy("", graph["test_xy"][j]),
        )
    for t, node in enumerate(graph.train_ids):
        row = examples.get(node)
        g.add_node(
            node,
            id=node,
            kind="train",
            slice="",
            label=row.label if row else "",
            predicted=(row.predicted or "") if row else "",
            text=_text(row),
            **_xy("helpful_", graph["helpful_xy"][t]),
            **_xy("harmful_", graph["harmful_xy"][t]),
        )
    tests, trains, weights = graph["edge_test"], graph["edge_train"], graph["edge_value"]
    g.add_weighted_edges_from(
        (graph.train_ids[int(t)], graph.test_ids[int(j)], float(w))
        for j, t, w in zip(tests, trains, weights, strict=True)
    )
    return g


def write(g: nx.Graph, path: str | Path, fmt: str) -> Path:
    """Write ``g`` as ``graphml`` or node-link ``json`` (edges under ``"links"``; each node's ``"id"`` is
    its example id, which is also the ``id`` attribute)."""
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r} is invalid: allowed {' | '.join(FORMATS)}")
    path = Path(path)
    if fmt == "graphml":
        nx.write_graphml(g, path)
    else:
        path.write_text(json.dumps(nx.node_link_data(g, edges="links")))
    return path


def read(path: str | Path, fmt: str) -> nx.Graph:
    """A graph written by :func:`write`."""
    if fmt == "graphml":
        return nx.read_graphml(path)
    g = nx.node_link_graph(
        json.loads(Path(path).read_text()), directed=False, multigraph=False, edges="links"
    )
    nx.set_node_attributes(g, {n: n for n in g.nodes}, "id")  # node-link keeps the id attribute as the key
    return g
