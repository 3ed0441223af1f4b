"""Time the graph layout: vectorised projected Weiszfeld (all nodes at once) against the original code's
per-node SLSQP, on a random bipartite graph shaped like the paper's (test nodes on slice arcs, each
training node with a few heavy-tailed |I| edges), and how far apart the two layouts are.

    python -m fastif_core.apps.graph.layout_bench --nodes 10000 --tests 400 --degree 40 --json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from fastif_core.apps.graph.layout import (
    circle_positions,
    geometric_medians,
    geometric_medians_slsqp,
    median_objective,
)


def random_graph(nodes: int, tests: int, slices: int, degree: int, seed: int) -> tuple[np.ndarray, ...]:
    """``(node, target, weight, points)`` of a random graph (each node with ``degree`` distinct test nodes)."""
    rng = np.random.default_rng(seed)
    points = circle_positions(np.sort(rng.integers(0, slices, tests)), slices, seed=seed)
    node = np.repeat(np.arange(nodes), degree)
    target = np.argsort(rng.random((nodes, tests)), axis=1)[:, :degree].ravel()
    return node, target, rng.exponential(1.0, node.size) ** 2, points


def run(nodes: int, tests: int, slices: int, degree: int, radius: float, seed: int) -> dict[str, float]:
    node, target, weight, points = random_graph(nodes, tests, slices, degree, seed)
    t0 = time.perf_counter()
    fast, iters = geometric_medians(
        node, target, weight, points, nodes, radius=radius, iterations=2000, tol=1e-9
    )
    t1 = time.perf_counter()
    ref = geometric_medians_slsqp(node, target, weight, points, nodes, radius=radius)
    t2 = time.perf_counter()
    f_fast = median_objective(fast, node, target, weight, points, nodes)
    f_ref = median_objective(ref, node, target, weight, points, nodes)
    return {
        "nodes": nodes,
        "tests": tests,
        "edges": int(node.size),
        "weiszfeld_s": t1 - t0,
        "weiszfeld_iterations": iters,
        "slsqp_s": t2 - t1,
        "speedup": (t2 - t1) / (t1 - t0),
        "max_position_diff": float(np.max(np.abs(fast - ref))),
        "max_rel_objective_excess": float(np.max((f_fast - f_ref) / f_ref)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--tests", type=int, default=400)
    p.add_argument("--slices", type=int, default=4)
    p.add_argument("--degree", type=int, default=40, help="edges per training node")
    p.add_argument("--radius", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    out = run(a.nodes, a.tests, a.slices, a.degree, a.radius, a.seed)
    print(json.dumps(out, indent=2) if a.json else "  ".join(f"{k}={v:.4g}" for k, v in out.items()))


if __name__ == "__main__":
    main()
