"""``run_bench``: every section of ``fastif bench`` in one run, written to ``bench.json`` + plots and the store."""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from fastif_core.benchmarks import lissa_grid, quality, retrain, speed
from fastif_core.benchmarks.common import (
    PAPER,
    BenchConfig,
    choose_test_examples,
    clip,
)
from fastif_core.benchmarks.engine import engine_benchmark
from fastif_core.benchmarks.plots import write_plots
from fastif_core.config import InfluenceConfig, STestConfig, to_dict
from fastif_core.progress import Progress, ignore, sub_range

# share of the progress bar per stage: engine, examples, multi-device, latency, grid, convex, transformer
STAGES = {
    "engine": 0.05,
    "examples": 0.45,
    "multi": 0.1,
    "latency": 0.08,
    "grid": 0.12,
    "convex": 0.1,
    "transformer": 0.1,
}


def _stage_ranges() -> dict[str, tuple[float, float]]:
    total, start, out = sum(STAGES.values()), 0.0, {}
    for name, share in STAGES.items():
        out[name] = (start / total, (start + share) / total)
        start += share
    return out


def run_bench(
    workspace: str | Path,
    out_dir: str | Path,
    *,
    test_examples: int = 10,
    quick: bool = False,
    devices: str = "cpu:1",
    retrain: bool = False,
    progress: Progress | None = None,
    config: BenchConfig | None = None,
) -> dict[str, Any]:
    """Run every benchmark section on a prepared workspace; write ``out_dir/bench.json`` and the plots,
    store the result (``Store.save_bench``) and return it. ``config`` overrides the keyword settings."""
    from fastif_core.parallel.group import parse_devices
    from fastif_core.store import Store
    from fastif_core.workspace.layout import LoadedWorkspace

    cfg = config or BenchConfig(test_examples=test_examples, quick=quick, devices=devices, retrain=retrain)
    device = parse_devices(cfg.validate().devices).devices[0]
    cfg = cfg.resolved(on_gpu=device.startswith("cuda"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started, ranges = time.perf_counter(), _stage_ranges()
    stage = lambda name: sub_range(progress, *ranges[name]) or ignore  # noqa: E731
    loaded = LoadedWorkspace.load(workspace, device)
    store = Store.open(workspace)
    stage("engine")(0.0, "workspace loaded")
    try:
        result = _sections(
            loaded, store, cfg, stage, lambda partial: write_bench_json(out, partial, complete=False)
        )
        result["seconds"] = time.perf_counter() - started
        result["plots"] = write_plots(result, out)
        result = write_bench_json(out, result, complete=True)  # exactly what bench.json and the store hold
        result["bench_id"] = store.save_bench(
            to_dict(cfg), result, kind="quick" if cfg.quick else "default"
        ).id
    finally:
        store.close()
    if progress is not None:
        progress(1.0, f"wrote {out / 'bench.json'}")
    return result


def json_safe(value: Any, path: str = "", notes: list[dict[str, str]] | None = None) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no inf / nan); each replacement is
    listed in ``notes`` as ``{"path": "a.b.0.c", "value": "inf" | "-inf" | "nan"}``."""
    if isinstance(value, float) and not math.isfinite(value):
        if notes is not None:
            notes.append({"path": path, "value": str(value)})
        return None
    if isinstance(value, dict):
        return {k: json_safe(v, f"{path}.{k}" if path else str(k), notes) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v, f"{path}.{i}" if path else str(i), notes) for i, v in enumerate(value)]
    return value


def write_bench_json(out: Path, result: dict[str, Any], *, complete: bool) -> dict[str, Any]:
    """Write ``out/bench.json`` atomically (sections so far while running: ``complete`` false); non-finite
    numbers become null, listed in ``non_finite``. Returns what was written."""
    notes: list[dict[str, str]] = []
    safe = json_safe({k: v for k, v in result.items() if k not in ("complete", "non_finite")}, "", notes)
    safe.update(complete=complete, non_finite=notes)
    text = json.dumps(safe, indent=2, allow_nan=False)
    tmp = out / ".bench.json.tmp"
    tmp.write_text(text)
    tmp.replace(out / "bench.json")
    return json.loads(text)


def _sections(loaded: Any, store: Any, cfg: BenchConfig, stage: Any, save: Any) -> dict[str, Any]:
    """Every section in turn; ``save(result)`` after each one, so a failure late in a long run keeps the
    sections already measured."""
    n = len(loaded.train_ids)
    ks = clip(cfg.ks, n)
    examples = choose_test_examples(store, loaded, cfg.test_examples, cfg.seed)
    result = _header(loaded, cfg, ks, examples)
    clock: dict[str, float] = {}
    result["section_seconds"] = clock
    save(result)

    def section(name: str, fn: Any) -> Any:
        start = time.perf_counter()
        out = fn()
        clock[name] = time.perf_counter() - start
        return out

    obj, train = loaded.objective, loaded.train
    result["engine"] = section("engine", lambda: engine_benchmark(obj, train, **_engine_sizes(cfg)))
    save(result)
    data = section("examples", lambda: _example_data(loaded, store, examples, cfg, ks, stage("examples")))
    timed_data = [d for d in data if d.seconds is not None]
    result["test_examples"] = [
        {
            "id": d.example.id,
            "correct": d.example.correct,
            "label": d.example.record.label,
            "timed": d.seconds is not None,
        }
        for d in data
    ]
    save(result)
    result["speed"] = {
        "single": speed.speed_table(timed_data, cfg, ks, n),
        "multi": section(
            "multi",
            lambda: speed.multi_device(loaded, [d.example for d in timed_data], cfg, ks, stage("multi")),
        ),
    }
    save(result)
    on_gpu = str(loaded.device).startswith("cuda")
    result["latency"] = section(
        "latency", lambda: speed.latency(loaded, examples[0], _click_config(cfg, ks, on_gpu))
    )
    stage("latency")(1.0, "one-click latency done")
    result["quality"] = quality.quality(data, ks)
    save(result)
    recall_ks = quality.default_recall_ks(n, ks)
    neighbours = [loaded.nearest(d.example.id, max(recall_ks))[0] for d in data]
    result["recall"] = quality.recall_curves(data, neighbours, recall_ks, cfg.recall_ms)
    save(result)
    result["lissa_tradeoff"] = section(
        "grid", lambda: lissa_grid.tradeoff(loaded, examples[0], cfg, stage("grid"))
    )
    save(result)
    convex = section("convex", lambda: retrain.convex_check(loaded, examples, cfg, stage("convex")))
    result["retrain"] = {"convex": convex, "transformer": None}
    save(result)
    if cfg.retrain:
        result["retrain"]["transformer"] = section(
            "transformer",
            lambda: retrain.transformer_check(
                loaded, examples, [d.full for d in data], cfg, stage("transformer")
            ),
        )
    save(result)
    return result


def _example_data(
    loaded: Any, store: Any, examples: Sequence[Any], cfg: BenchConfig, ks: list[int], progress: Progress
) -> list[speed.ExampleData]:
    """Fresh timed computations for the first ``timed_examples``, cached-or-computed values for the rest."""
    timed_n = len(examples) if cfg.timed_examples is None else min(cfg.timed_examples, len(examples))
    data = []
    for i, ex in enumerate(examples):
        progress(
            i / len(examples),
            f"test example {i + 1}/{len(examples)} ({'timed' if i < timed_n else 'values'})",
        )
        if i < timed_n:
            data.append(speed.measure_example(loaded, ex, cfg, ks))
            speed.save_runs(loaded, store, data[-1], cfg)
        else:
            data.append(speed.stored_or_computed(loaded, store, ex, cfg, ks))
    return data


def _engine_sizes(cfg: BenchConfig) -> dict[str, Any]:
    if cfg.quick:
        return {
            "candidates": 16,
            "batch_size": 16,
            "reference_count": 2,
            "hvp_batch_sizes": (1,),
            "hvp_repeats": 1,
            "seed": cfg.seed,
        }
    return {
        "candidates": 256,
        "batch_size": cfg.score_batch_size,
        "reference_count": 32,
        "hvp_batch_sizes": (1, 8),
        "hvp_repeats": 3,
        "seed": cfg.seed,
    }


def _click_config(cfg: BenchConfig, ks: list[int], on_gpu: bool) -> InfluenceConfig:
    """The dashboard's (and the CLI's) default settings, or the run's fast kNN row when scaled down."""
    if cfg.latency_default_preset:
        return InfluenceConfig(s_test=STestConfig.default())
    return replace(cfg.influence("fast", max(ks)), top=InfluenceConfig().top)


def _header(loaded: Any, cfg: BenchConfig, ks: list[int], examples: Sequence[Any]) -> dict[str, Any]:
    paper_scale = (
        cfg.depth == PAPER["fast"]["depth"] and cfg.original_batch == PAPER["original"]["batch_size"]
    )
    return {
        "version": 1,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "workspace": str(loaded.root),
        "model_id": loaded.model_id,
        "num_train": len(loaded.train_ids),
        "trainable_params": loaded.objective.num_params,
        "device": str(loaded.device),
        "threads": torch.get_num_threads(),
        "host": {
            "machine": platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "settings": {
            **to_dict(cfg),
            "ks_used": ks,
            "scaled_down": not paper_scale,
            "paper": PAPER,
            "presets": {p: to_dict(cfg.preset(p)) for p in speed.PRESETS},
            "test_examples_found": {
                "correct": sum(e.correct for e in examples),
                "incorrect": sum(not e.correct for e in examples),
            },
        },
    }
