"""apps.graph.layout: test nodes on their slice's arc; the vectorised projected Weiszfeld layout equals a
per-node scipy SLSQP solve (the original code's method) and never ends above it; a training node that
influences only slice A lies nearer A's arc than one influencing only B."""

from __future__ import annotations

import numpy as np
import pytest

from fastif_core.apps.graph.layout import (
    circle_positions,
    geometric_medians,
    geometric_medians_slsqp,
    median_objective,
    project_to_disc,
)

R = 0.8


def random_graph(seed: int, nodes: int, tests: int, slices: int, degree: int):
    rng = np.random.default_rng(seed)
    test_slice = np.sort(rng.integers(0, slices, tests))
    points = circle_positions(test_slice, slices, seed=seed)
    node = np.repeat(np.arange(nodes), degree)
    target = np.concatenate([rng.choice(tests, degree, replace=False) for _ in range(nodes)])
    weight = rng.exponential(1.0, node.size) ** 2  # heavy-tailed, like |I|
    return node, target, weight, points


def test_test_nodes_lie_on_the_unit_circle_each_slice_on_its_own_arc():
    test_slice = np.array([0] * 5 + [1] * 7 + [2] * 3)
    xy = circle_positions(test_slice, 3, seed=1)
    assert np.allclose(np.linalg.norm(xy, axis=1), 1.0)
    angle = np.mod(np.pi / 2 - np.arctan2(xy[:, 1], xy[:, 0]), 2 * np.pi)  # clockwise from the top
    for s in range(3):
        arc = angle[test_slice == s]
        assert arc.min() > s * 2 * np.pi / 3 and arc.max() < (s + 1) * 2 * np.pi / 3


def test_weiszfeld_matches_per_node_slsqp_on_a_small_graph():
    node, target, weight, points = random_graph(seed=0, nodes=60, tests=40, slices=4, degree=6)
    fast, iters = geometric_medians(node, target, weight, points, 60, radius=R, iterations=5000, tol=1e-12)
    ref = geometric_medians_slsqp(node, target, weight, points, 60, radius=R)
    assert iters < 5000
    assert np.all(np.linalg.norm(fast, axis=1) <= R + 1e-12)
    f_fast = median_objective(fast, node, target, weight, points, 60)
    f_ref = median_objective(ref, node, target, weight, points, 60)
    assert np.all(f_fast <= f_ref + 1e-7 * f_ref)  # never worse than SLSQP's optimum
    assert np.max(np.abs(fast - ref)) < 1e-4
    on_boundary = np.linalg.norm(ref, axis=1) > R - 1e-6
    assert on_boundary.any() and (~on_boundary).any()  # both the constrained and the free case are tested


def test_one_edge_puts_the_node_on_the_inner_circle_towards_its_test_node():
    points = circle_positions(np.array([0, 1]), 2, seed=0)
    p, _ = geometric_medians(np.array([0]), np.array([1]), np.array([2.0]), points, 2, radius=R)
    assert np.allclose(p[0], R * points[1])
    assert np.isnan(p[1]).all()  # a node without edges has no position


def test_a_node_of_slice_a_lies_nearer_a_than_a_node_of_slice_b():
    test_slice = np.array([0] * 10 + [1] * 10)
    points = circle_positions(test_slice, 2, seed=0)
    a, b = np.arange(10), np.arange(10, 20)
    node = np.r_[np.zeros(10, int), np.ones(10, int)]
    p, _ = geometric_medians(node, np.r_[a, b], np.ones(20), points, 2, radius=R)
    centre_a, centre_b = points[a].mean(0), points[b].mean(0)
    assert np.linalg.norm(p[0] - centre_a) < np.linalg.norm(p[0] - centre_b)
    assert np.linalg.norm(p[1] - centre_b) < np.linalg.norm(p[1] - centre_a)


@pytest.mark.parametrize("radius", [0.5, 0.9])
def test_projection_keeps_inside_points_and_moves_outside_ones_radially(radius):
    pts = np.array([[0.1, 0.2], [3.0, 4.0], [0.0, -2.0]])
    out = project_to_disc(pts, radius)
    assert np.allclose(out[0], pts[0])
    assert np.allclose(out[1], radius * np.array([0.6, 0.8])) and np.allclose(out[2], [0.0, -radius])
