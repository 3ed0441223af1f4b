"""Speed (Table 1) and one-click latency: fresh, timed influence computations per test example.

Per test example the bench computes, each timed: the test gradient; s_test with the 'original' and the
'fast' preset; full enumeration (every training example scored with the original s_test); the kNN
search and the scoring of the k nearest with each preset, for every k. A Table 1 row's time is the sum
of its stages (a kNN row: search + test gradient + s_test of its preset + scoring of k candidates), so
the rows sharing a preset share one s_test computation: it is the same computation, done once.
Values computed here also feed the quality and recall sections and are stored as influence runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fastif_core.benchmarks.common import BenchConfig, TestExample, mean_std, spread, timed
from fastif_core.config import InfluenceConfig, to_dict
from fastif_core.engine.influence import compute_influence, test_gradient
from fastif_core.engine.scoring import score_candidates
from fastif_core.engine.solvers import solve
from fastif_core.progress import Progress
from fastif_core.queries.influence import cache_key, stored_config

PRESETS = ("original", "fast")


@dataclass
class ExampleData:
    """Influence values of one test example, and (when computed fresh) how long each stage took."""

    example: TestExample
    full: Tensor  # (N,) influence of every training example, original s_test
    knn: dict[int, list[int]]  # k -> positions of the k nearest training examples, nearest first
    scores: dict[str, dict[int, Tensor]]  # preset -> k -> (k,) influence of knn[k]
    s_test_stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # preset -> LissaResult.stats()
    seconds: dict[str, float] | None = None  # stage -> seconds; None when the values came from the store


def measure_example(loaded: Any, ex: TestExample, cfg: BenchConfig, ks: Sequence[int]) -> ExampleData:
    """Every stage of every Table 1 row for one test example, computed fresh and timed."""
    obj, train, bs = loaded.objective, loaded.train, cfg.score_batch_size
    v, t_grad = timed(lambda: test_gradient(obj, ex.batch))
    seconds: dict[str, float] = {"test_gradient": t_grad}
    s_test, stats = {}, {}
    for preset in PRESETS:
        est, seconds[f"s_test/{preset}"] = timed(lambda p=preset: solve(obj, v, train, cfg.preset(p)))
        s_test[preset], stats[preset] = est.s_test, est.stats()
    for preset in PRESETS:
        stats[preset] |= s_test_geometry(v, s_test[preset], s_test["original"])
    full, seconds["score/full"] = timed(
        lambda: score_candidates(obj, s_test["original"], train, range(len(train)), bs)
    )
    knn, scores = {}, {p: {} for p in PRESETS}
    for k in ks:
        (knn[k], _), seconds[f"knn/{k}"] = timed(lambda k=k: loaded.nearest(ex.id, k))
        for preset in PRESETS:
            scores[preset][k], seconds[f"score/{preset}/{k}"] = timed(
                lambda p=preset, k=k: score_candidates(obj, s_test[p], train, knn[k], bs)
            )
    return ExampleData(ex, full.detach().cpu(), knn, _cpu(scores), stats, seconds)


def s_test_geometry(v: Tensor, s: Tensor, s_original: Tensor) -> dict[str, float]:
    """How far the Hessian moved s_test from the test gradient direction (``cos_with_gradient`` near 1: the
    recursion is dominated by its identity term, e.g. at a scaled-down depth) and how close it lies to the
    original preset's s_test (``cos_with_original``)."""

    def cos(a: Tensor, b: Tensor) -> float:  # in float64, clipped to [-1, 1] against round-off
        c = torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0)
        return float(c.clamp(-1.0, 1.0))

    return {"cos_with_gradient": cos(s, v), "cos_with_original": cos(s, s_original)}


def _cpu(scores: dict[str, dict[int, Tensor]]) -> dict[str, dict[int, Tensor]]:
    return {p: {k: v.detach().cpu() for k, v in by_k.items()} for p, by_k in scores.items()}


def stored_or_computed(
    loaded: Any, store: Any, ex: TestExample, cfg: BenchConfig, ks: Sequence[int]
) -> ExampleData:
    """Values only (no timings): the store's cached full and largest-k fast runs when their configs match,
    otherwise computed with :func:`measure_example` (timings then dropped, as for a cached answer)."""
    kmax = max(ks)
    full = _stored_values(loaded, store, ex.id, cfg.influence("original", None))
    fast = _stored_values(loaded, store, ex.id, cfg.influence("fast", kmax))
    if full is None or fast is None:
        data = measure_example(loaded, ex, cfg, ks)
        data.seconds = None
        return data
    knn = {k: loaded.nearest(ex.id, k)[0] for k in ks}
    scores = {
        "original": {k: full[torch.as_tensor(knn[k])] for k in ks},
        "fast": {k: fast[torch.as_tensor(knn[k])] for k in ks},
    }
    return ExampleData(ex, full, knn, scores)


def _stored_values(loaded: Any, store: Any, example_id: str, icfg: InfluenceConfig) -> Tensor | None:
    """``(N,)`` stored influence by training position (NaN where not a candidate), or None if not stored."""
    found = store.find_influence_run(loaded.model_id, example_id, cache_key(icfg))
    if found is None:
        return None
    run = store.get_influence_run(found.id, with_text=False)
    position = {tid: p for p, tid in enumerate(loaded.train_ids)}
    values = torch.full((len(loaded.train_ids),), float("nan"), dtype=torch.float64)
    for s in run.scores:
        values[position[s.train_id]] = s.value
    return values


def save_runs(loaded: Any, store: Any, data: ExampleData, cfg: BenchConfig) -> None:
    """Store the full run and the largest-k fast run (the dashboard shows them; later benches reuse them)."""
    if data.seconds is None:
        return
    kmax, sec, ids = max(data.knn), data.seconds, loaded.train_ids
    full_secs = {
        "test_gradient": sec["test_gradient"],
        "s_test": sec["s_test/original"],
        "scoring": sec["score/full"],
    }
    fast_secs = {
        "knn": sec[f"knn/{kmax}"],
        "test_gradient": sec["test_gradient"],
        "s_test": sec["s_test/fast"],
        "scoring": sec[f"score/fast/{kmax}"],
    }
    runs = [
        (
            cfg.influence("original", None),
            list(zip(ids, data.full.tolist(), strict=True)),
            full_secs,
            "original",
        ),
        (
            cfg.influence("fast", kmax),
            [(ids[p], v) for p, v in zip(data.knn[kmax], data.scores["fast"][kmax].tolist(), strict=True)],
            fast_secs,
            "fast",
        ),
    ]
    for icfg, scores, secs, preset in runs:
        store.save_influence_run(
            loaded.model_id,
            data.example.id,
            stored_config(icfg),
            scores,
            num_candidates=len(scores),
            timings={**secs, "total": sum(secs.values())},
            s_test_stats=data.s_test_stats.get(preset, {}),
        )


def row_seconds(data: ExampleData, row: str) -> float:
    """Seconds of one Table 1 row (``full`` or ``knn{k}/{preset}``) for one test example."""
    sec = data.seconds or {}
    if row == "full":
        return sec["test_gradient"] + sec["s_test/original"] + sec["score/full"]
    k, preset = row.removeprefix("knn").split("/")
    return sec[f"knn/{k}"] + sec["test_gradient"] + sec[f"s_test/{preset}"] + sec[f"score/{preset}/{k}"]


def row_names(ks: Sequence[int]) -> list[str]:
    return ["full"] + [f"knn{k}/{p}" for k in ks for p in PRESETS]


def speed_table(timed_data: Sequence[ExampleData], cfg: BenchConfig, ks: Sequence[int], n_train: int) -> dict:
    """Table 1 for one process: per row its settings, spread of seconds and speed-up over full."""
    rows = {}
    for row in row_names(ks):
        secs = [row_seconds(d, row) for d in timed_data]
        rows[row] = _row_info(row, cfg, n_train) | {"seconds": spread(secs), "per_example": secs}
    full_median = rows["full"]["seconds"]["median"]
    for info in rows.values():
        info["speedup_vs_full"] = full_median / info["seconds"]["median"]
    stages = sorted({s for d in timed_data for s in (d.seconds or {})})
    geometry = {
        p: {
            key: mean_std([d.s_test_stats[p][key] for d in timed_data])
            for key in ("cos_with_gradient", "cos_with_original")
        }
        for p in PRESETS
    }
    return {
        "rows": rows,
        "stages": {s: spread([d.seconds[s] for d in timed_data]) for s in stages},
        "s_test": geometry,
    }


def _row_info(row: str, cfg: BenchConfig, n_train: int) -> dict:
    if row == "full":
        return {"candidates": n_train, "preset": "original", "s_test": to_dict(cfg.preset("original"))}
    k, preset = row.removeprefix("knn").split("/")
    return {"candidates": int(k), "preset": preset, "s_test": to_dict(cfg.preset(preset))}


def latency(loaded: Any, ex: TestExample, icfg: InfluenceConfig) -> dict:
    """One dashboard click, fresh: kNN search, test gradient, s_test and scoring seconds, and the total."""
    n = len(loaded.train_ids)
    icfg = InfluenceConfig(
        s_test=icfg.s_test,
        k=None if icfg.k is None else min(icfg.k, n),
        top=icfg.top,
        score_batch_size=icfg.score_batch_size,
    )
    candidates, t_knn = timed(lambda: loaded.nearest(ex.id, icfg.k)[0] if icfg.k is not None else None)
    result = compute_influence(loaded.objective, ex.batch, loaded.train, candidates, icfg)
    seconds = {"knn": t_knn, **result.seconds}
    seconds["total"] = t_knn + result.seconds["total"]
    share = {k: v / seconds["total"] for k, v in seconds.items() if k != "total"}
    return {
        "example_id": ex.id,
        "config": to_dict(icfg),
        "seconds": seconds,
        "share": share,
        "s_test": result.s_test_stats,
    }


def rank_state(device: str, rank: int, root: str) -> tuple[Any, Any]:
    """Loader of each rank of a device group: the workspace's objective and training examples (the
    caller searches with its own loaded workspace, so no rank loads the index)."""
    from fastif_core.workspace.layout import LoadedWorkspace

    loaded = LoadedWorkspace.load(root, device, search=False)
    return loaded.objective, loaded.train


def multi_device(
    loaded: Any, examples: Sequence[TestExample], cfg: BenchConfig, ks: Sequence[int], progress: Progress
) -> dict | None:
    """Table 1 on every device of ``cfg.devices`` (end to end per row); None with a single device."""
    from fastif_core.parallel.group import ParallelContext, parse_devices

    spec = parse_devices(cfg.devices)
    if spec.world_size < 2:
        return None
    rows: dict[str, list[float]] = {r: [] for r in row_names(ks)}
    with ParallelContext.start(cfg.devices) as ctx:
        ctx.load("bench", rank_state, root=str(loaded.root))
        for i, ex in enumerate(examples):
            progress(i / len(examples), f"{spec}: test example {i + 1}/{len(examples)}")
            for row in rows:
                k = None if row == "full" else int(row.removeprefix("knn").split("/")[0])
                icfg = cfg.influence("original" if k is None else row.split("/")[1], k)
                cands, t_knn = timed(lambda k=k, ex=ex: None if k is None else loaded.nearest(ex.id, k)[0])
                result = ctx.influence("bench", ex.batch, cands, icfg)
                rows[row].append(t_knn + result.seconds["total"])
    out = {r: {"seconds": spread(s), "per_example": s} for r, s in rows.items()}
    for info in out.values():
        info["speedup_vs_full"] = out["full"]["seconds"]["median"] / info["seconds"]["median"]
    return {"devices": str(spec), "world_size": spec.world_size, "rows": out}
