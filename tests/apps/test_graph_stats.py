"""apps.graph.stats on hand-made influence matrices: Table 4 arithmetic by hand, Table 5 (slice means and
pairwise-complete Pearson with counts) against a naive loop over training examples, slices that share
no training example (no correlation, count 0), and a pair with too few shared examples."""

from __future__ import annotations

import math

import numpy as np

from fastif_core.apps.graph.stats import correlation_table, slice_correlations, slice_means, slice_statistics

NAN = np.nan
# 4 test examples (slices 0, 0, 1, 2) x 5 training examples; NaN = not a candidate
VALUES = np.array(
    [
        [-2.0, 1.0, NAN, NAN, NAN],
        [-4.0, NAN, 3.0, NAN, NAN],
        [NAN, -1.0, 2.0, 5.0, NAN],
        [NAN, NAN, NAN, 4.0, -6.0],
    ]
)
SLICE = np.array([0, 0, 1, 2])
NAMES = ["a", "b", "c"]


def test_slice_statistics_by_hand():
    a, b, c = slice_statistics(VALUES, SLICE, NAMES)
    assert a == {
        "slice": "a",
        "test_examples": 2,
        "train_nodes": 3,
        "edges": 4,
        "helpful_edges": 2,
        "harmful_edges": 2,
        "helpful_mean_abs": 3.0,
        "harmful_mean_abs": 2.0,
        "mean": -0.5,
    }
    assert (b["helpful_edges"], b["harmful_edges"], b["helpful_mean_abs"], b["harmful_mean_abs"]) == (
        1,
        2,
        1.0,
        3.5,
    )
    assert (c["helpful_edges"], c["harmful_edges"], c["harmful_mean_abs"], c["train_nodes"]) == (1, 1, 4.0, 2)


def naive_means(values, test_slice, num_slices):
    out = np.full((values.shape[1], num_slices), np.nan)
    for i in range(values.shape[1]):
        for s in range(num_slices):
            vals = [
                values[j, i]
                for j in range(values.shape[0])
                if test_slice[j] == s and not math.isnan(values[j, i])
            ]
            if vals:
                out[i, s] = sum(vals) / len(vals)
    return out


def naive_pearson(x, y):
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=False))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if n >= 2 and sxx > 0 and syy > 0 else math.nan


def naive_correlations(means):
    s = means.shape[1]
    corr, count = np.full((s, s), np.nan), np.zeros((s, s), int)
    for a in range(s):
        for b in range(s):
            rows = [
                i
                for i in range(means.shape[0])
                if not math.isnan(means[i, a]) and not math.isnan(means[i, b])
            ]
            count[a, b] = len(rows)
            corr[a, b] = naive_pearson([means[i, a] for i in rows], [means[i, b] for i in rows])
    return corr, count


def test_slice_means_by_hand_and_against_the_naive_loop():
    means = slice_means(VALUES, SLICE, 3)
    np.testing.assert_allclose(means, naive_means(VALUES, SLICE, 3), equal_nan=True)
    assert means[0, 0] == -3.0 and means[1, 0] == 1.0 and means[2, 0] == 3.0 and np.isnan(means[0, 1])


def test_slices_sharing_no_training_example_have_no_correlation_and_count_zero():
    table = correlation_table(VALUES, SLICE, NAMES)
    assert table["count"][0][2] == 0 and table["pearson"][0][2] is None
    assert table["count"][1][2] == 1 and table["pearson"][1][2] is None  # one shared example: undefined
    assert table["count"][0][1] == 2  # training examples 1 and 2 reach both a and b
    assert abs(table["pearson"][0][1] - 1.0) < 1e-12  # (1, 3) against (-1, 2): two points on a line
    assert table["count"][0][0] == 3 and abs(table["pearson"][0][0] - 1.0) < 1e-12


def test_correlations_match_the_naive_loop_on_a_random_sparse_matrix():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(60, 200)) * rng.exponential(size=(1, 200))
    values[rng.random(values.shape) < 0.8] = np.nan  # most pairs are not edges
    test_slice = rng.integers(0, 5, 60)
    values[test_slice == 4, :100] = np.nan  # slice 4 shares few training examples with others
    means = slice_means(values, test_slice, 5)
    np.testing.assert_allclose(means, naive_means(values, test_slice, 5), equal_nan=True, rtol=1e-12)
    corr, count = slice_correlations(means)
    ref_corr, ref_count = naive_correlations(means)
    np.testing.assert_array_equal(count, ref_count)
    np.testing.assert_allclose(corr, ref_corr, equal_nan=True, atol=1e-10)
    assert np.isfinite(corr).sum() > 20


def test_a_constant_column_has_no_correlation():
    means = np.array([[1.0, 2.0], [1.0, 3.0], [1.0, 5.0]])
    corr, count = slice_correlations(means)
    assert np.isnan(corr[0, 1]) and count[0, 1] == 3 and abs(corr[1, 1] - 1) < 1e-12
