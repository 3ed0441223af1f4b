"""Quality of the shortcuts: fast-vs-full correlations (Table 3) and kNN recall (Fig. 3, App. A.1).

Correlations compare, over the k nearest candidates of each test example, the influence values of a
kNN row (its preset's s_test) with the full row's values (original s_test) for the same candidates.
The 'original' kNN rows use the same s_test as full, so they are the full-vs-full check: their
correlation is 1 up to float rounding (the kNN path and the full path agree). The 'fast' rows measure what FastIF's B=1 s_test costs.

Recall R@m(k): the fraction of the top-m training examples of full enumeration (most helpful = most
negative, most harmful = most positive, unsigned = largest |influence|) found among the k nearest
neighbours. Random selection of k of N examples has expected recall k/N.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from scipy import stats
from torch import Tensor

from fastif_core.benchmarks.common import clip, groups, mean_std
from fastif_core.benchmarks.speed import PRESETS, ExampleData

METRICS = ("pearson", "spearman", "kendall")
KINDS = ("helpful", "harmful", "unsigned")


def correlations(a: Tensor, b: Tensor) -> dict[str, float | None]:
    """Pearson, Spearman and Kendall correlation of two value vectors (None when undefined)."""
    x, y = a.double().numpy(), b.double().numpy()
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return dict.fromkeys(METRICS, None)
    out = {
        "pearson": stats.pearsonr(x, y).statistic,
        "spearman": stats.spearmanr(x, y).statistic,
        "kendall": stats.kendalltau(x, y).statistic,
    }
    return {k: (float(v) if math.isfinite(float(v)) else None) for k, v in out.items()}


def quality(data: Sequence[ExampleData], ks: Sequence[int]) -> dict:
    """Table 3: per (k, preset) mean ± std over test examples of each correlation with full, by group."""
    table: dict[str, dict] = {}
    for k in ks:
        for preset in PRESETS:
            per_example = [correlations(d.scores[preset][k], d.full[torch.as_tensor(d.knn[k])]) for d in data]
            table[f"knn{k}/{preset}"] = {
                "k": k,
                "preset": preset,
                "by_group": {
                    g: {m: mean_std([per_example[i][m] for i in idx]) for m in METRICS}
                    for g, idx in groups([d.example for d in data]).items()
                },
                "per_example": per_example,
            }
    return {"rows": table}


def top_sets(values: Tensor, m: int) -> dict[str, set[int]]:
    """Training positions of the top-m helpful, harmful and unsigned examples of full enumeration."""
    finite = torch.nan_to_num(values.double(), nan=0.0)
    return {
        "helpful": set(torch.argsort(finite, stable=True)[:m].tolist()),
        "harmful": set(torch.argsort(finite, descending=True, stable=True)[:m].tolist()),
        "unsigned": set(torch.argsort(finite.abs(), descending=True, stable=True)[:m].tolist()),
    }


def recall_curves(
    data: Sequence[ExampleData],
    neighbours: Sequence[Sequence[int]],
    recall_ks: Sequence[int],
    ms: Sequence[int],
) -> dict:
    """R@m for every k in ``recall_ks`` and m in ``ms`` (clipped to N), by group and kind, vs random (k/N).

    ``neighbours[i]`` is test example i's full nearest-neighbour order (at least ``max(recall_ks)`` long).
    """
    n = len(data[0].full)
    ks, ms = clip(recall_ks, n), clip(ms, n)
    per_example = []
    for d, nn in zip(data, neighbours, strict=True):
        per_m = {}
        for m in ms:
            tops = top_sets(d.full, m)
            per_m[m] = {kind: [len(top & set(nn[:k])) / m for k in ks] for kind, top in tops.items()}
        per_example.append(per_m)
    by_group = {}
    for g, idx in groups([d.example for d in data]).items():
        by_group[g] = {
            str(m): {kind: _mean_curve([per_example[i][m][kind] for i in idx]) for kind in KINDS} for m in ms
        }
    return {
        "ks": ks,
        "ms": ms,
        "num_train": n,
        "random": [k / n for k in ks],
        "by_group": by_group,
        "examples": {g: len(idx) for g, idx in groups([d.example for d in data]).items()},
    }


def _mean_curve(curves: list[list[float]]) -> list[float | None]:
    if not curves:
        return []
    return [sum(c[j] for c in curves) / len(curves) for j in range(len(curves[0]))]


def default_recall_ks(n: int, ks: Sequence[int]) -> list[int]:
    """A log-spaced range of k from 10 to N (including the speed table's ks)."""
    grid = [10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000]
    return clip([k for k in grid if k < n] + list(ks) + [n], n)
