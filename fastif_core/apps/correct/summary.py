"""Seeds of a correction comparison: summaries over seeds, and merging runs that hold different seeds.

One comparison (target, pool, settings, model) can be run as one ``--seeds S`` run or as several
runs of one seed each (``--seed s --seeds 1 --split-seed 0``, on other machines or days). Runs whose
settings agree except for ``seed``/``seeds``, with the same split (``split_seed``, None meaning
``seed``), the same model and the same ``before`` are one comparison: :func:`merge_runs` joins their
seeds into one result of the same shape as a run's (so the CLI and the dashboard show it the same way),
with the summary over all distinct seeds. Pure functions over result dicts: no torch, no I/O.
"""

from __future__ import annotations

import json
from typing import Any

# settings that say which seeds a run holds (or, model_id, how the model was named: None = the active one;
# the result's model_id is the model itself), not what is compared
NOT_COMPARED = ("seed", "seeds", "save", "model_id")


def summarize(before: dict[str, dict], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, min and max over seeds of loss and accuracy per part and iteration (index 0 = before)."""
    out: dict[str, Any] = {}
    for part in before:
        out[part] = {}
        for metric in ("accuracy", "loss"):
            series = [[before[part][metric], *[it[part][metric] for it in r["curve"]]] for r in runs]
            if any(v is None for s in series for v in s):
                continue
            cols = list(zip(*series, strict=True))
            out[part][metric] = {
                "mean": [sum(c) / len(c) for c in cols],
                "min": [min(c) for c in cols],
                "max": [max(c) for c in cols],
            }
    return out


def comparison_key(result: dict[str, Any]) -> str:
    """What a run compares: its settings without the seed fields (the split seed made explicit), the
    model, the kind, and the evaluated parts' sizes and accuracy before (so runs that disagree there,
    e.g. on a changed workspace, are never merged)."""
    settings = {k: v for k, v in result["settings"].items() if k not in NOT_COMPARED}
    if settings.get("pool_size") is None:  # absent in runs stored before pool_size existed
        settings.pop("pool_size", None)
    split = result["settings"].get("split_seed")
    settings["split_seed"] = result["settings"]["seed"] if split is None else split
    before = {part: [m["n"], m["accuracy"]] for part, m in result["before"].items()}
    key = {"settings": settings, "model_id": result["model_id"], "kind": result["kind"], "before": before}
    return json.dumps(key, sort_keys=True, default=str)


def merge_runs(runs: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Merge stored runs ``(run_id, result)`` into one result per comparison, oldest run first.

    Each merged result has the run fields (``settings`` with ``seed`` = the smallest seed and ``seeds``
    = their count, ``before``, ``sizes``, ``methods`` with ``seeds``/``after``/``summary``) plus
    ``run_ids``, ``seed_list`` and ``seconds`` = ``{"total": sum, "runs": {id: total}}``. A seed held by
    two runs is taken from the older one.
    """
    groups: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for run_id, result in sorted(runs, key=lambda r: r[0]):
        groups.setdefault(comparison_key(result), []).append((run_id, result))
    return [_merge(group) for group in groups.values()]


def _merge(group: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    first = group[0][1]
    methods: dict[str, Any] = {}
    for method in first["methods"]:
        by_seed: dict[int, dict[str, Any]] = {}
        for _, result in group:
            for seed_run in result["methods"][method]["seeds"]:
                by_seed.setdefault(int(seed_run["seed"]), seed_run)
        seeds = [by_seed[s] for s in sorted(by_seed)]
        methods[method] = {
            "seeds": seeds,
            "after": {s["seed"]: s["curve"][-1] for s in seeds},
            "summary": summarize(first["before"], seeds),
        }
    seed_list = sorted({int(s["seed"]) for m in methods.values() for s in m["seeds"]})
    settings = {**first["settings"], "seed": seed_list[0], "seeds": len(seed_list), "save": None}
    if settings.get("split_seed") is None:
        settings["split_seed"] = first["settings"]["seed"]
    totals = {run_id: float(result["seconds"]["total"]) for run_id, result in group}
    devices = sorted({str(result["device"]) for _, result in group})
    return {
        **first,
        "settings": settings,
        "methods": methods,
        "run_ids": [run_id for run_id, _ in group],
        "seed_list": seed_list,
        "seconds": {"total": sum(totals.values()), "runs": totals},
        "device": ", ".join(devices),
    }


def markdown_table(result: dict[str, Any], metric: str = "accuracy") -> str:
    """One markdown table of a run or merged comparison: a row ``before`` and one per method, a column per
    evaluated part (with its n); each cell the final ``metric`` from the method's summary, ``mean [min, max]``
    over the seeds (the value alone for one seed)."""
    parts = list(result["before"])
    head = ["method", *[f"{part} (n={result['before'][part]['n']})" for part in parts]]
    rows = [["before", *[f"{result['before'][p][metric]:.3f}" for p in parts]]]
    for method, m in result["methods"].items():
        one = len(m["seeds"]) == 1
        rows.append([method, *[_cell(m["summary"][p].get(metric), one) for p in parts]])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def _cell(stats: dict[str, list[float]] | None, one_seed: bool) -> str:
    if stats is None:  # summarize leaves out a metric some seed did not measure
        return "–"
    mean, low, high = stats["mean"][-1], stats["min"][-1], stats["max"][-1]
    return f"{mean:.3f}" if one_seed else f"{mean:.3f} [{low:.3f}, {high:.3f}]"
