"""Curves and summaries of a simulatability study (plain lists in, JSON-able dicts out).

A *curve* is, for one test example and one explanation kind, the simulator's loss change
``loss after the step − loss before`` against the learning rate: the mean over the kind's explanation
examples and the min/max band. The summary averages the per-example mean curves over the test examples of
each group (``correct``, ``incorrect``, ``all``), with the min/max of those means as its band, and reports
each kind's best learning rate (lowest mean change) and its mean change over the whole grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

GROUPS = ("correct", "incorrect", "all")


def curve(rows: Sequence[Sequence[float]]) -> dict[str, Any] | None:
    """Mean, min and max per column of ``rows`` (one row per explanation example), or None without rows."""
    if not rows:
        return None
    cols = list(zip(*rows, strict=True))
    return {
        "mean": [sum(c) / len(c) for c in cols],
        "min": [min(c) for c in cols],
        "max": [max(c) for c in cols],
        "n": len(rows),
    }


def example_curves(changes: Sequence[Sequence[float]], kinds: dict[str, Sequence[int]]) -> dict[str, Any]:
    """The curve of every kind; ``kinds`` maps a kind to its rows of ``changes`` (E × L loss changes)."""
    return {kind: curve([changes[r] for r in rows]) for kind, rows in kinds.items()}


def _group(examples: Sequence[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in examples if name == "all" or e["correct"] == (name == "correct")]


def kind_summary(curves: Sequence[dict[str, Any]], lrs: Sequence[float]) -> dict[str, Any] | None:
    """Mean over test examples of their mean curves, the band of those means, the best learning rate and
    the mean change over the grid."""
    band = curve([c["mean"] for c in curves])
    if band is None:
        return None
    best = min(range(len(lrs)), key=band["mean"].__getitem__)
    return {
        **band,
        "best_lr": lrs[best],
        "best_change": band["mean"][best],
        "grid_mean_change": sum(band["mean"]) / len(lrs),
    }


def summarize(
    examples: Sequence[dict[str, Any]], kinds: Sequence[str], lrs: Sequence[float]
) -> dict[str, Any]:
    """Per group (correct / incorrect / all) and kind: :func:`kind_summary` and the mean loss before."""
    out: dict[str, Any] = {}
    for name in GROUPS:
        members = _group(examples, name)
        out[name] = {
            "n": len(members),
            "loss_before": sum(e["loss_before"] for e in members) / len(members) if members else None,
            "kinds": {
                k: kind_summary([e["curves"][k] for e in members if e["curves"].get(k)], lrs) for k in kinds
            },
        }
    out["finding"] = finding(out)
    return out


def finding(summary: dict[str, Any]) -> dict[str, Any]:
    """The paper's claim, tested on this run: helpful explanations lower the simulator's loss more than
    random ones when the prediction is correct, harmful ones when it is incorrect (at the best learning
    rate and over the grid); None where a kind has no curve."""

    def beats(group: str, kind: str, field: str) -> bool | None:
        kinds = summary[group]["kinds"]
        if kinds.get(kind) is None or kinds.get("random") is None:
            return None
        return kinds[kind][field] < kinds["random"][field]

    return {
        f"{g}_{k}_beats_random": {
            "best_lr": beats(g, k, "best_change"),
            "grid": beats(g, k, "grid_mean_change"),
        }
        for g, k in (("correct", "helpful"), ("incorrect", "harmful"))
    }
