"""Shared pieces of ``fastif bench``: settings, the test examples, timing and statistics helpers."""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from fastif_core.config import InfluenceConfig, STestConfig
from fastif_core.errors import ConfigError, WorkspaceError

PAPER = {
    "original": {"depth": 1000, "batch_size": 128, "repeats": 1},
    "fast": {"depth": 1000, "batch_size": 1, "repeats": 1},
    "ks": [100, 1000],
}


def _f(default: Any, help: str) -> Any:  # noqa: A002 - mirrors config.py
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class BenchConfig:
    """What ``fastif bench`` measures. ``None`` fields are filled by :meth:`resolved` from the hardware
    (the paper's settings on a GPU, scaled down on a CPU, tiny with ``quick``)."""

    test_examples: int = _f(10, "test examples (half correctly, half incorrectly predicted)")
    timed_examples: int | None = _f(None, "test examples timed fresh (None: all); the rest reuse cached runs")
    quick: bool = _f(False, "tiny settings that finish in minutes (tests, smoke runs)")
    devices: str = _f("cpu:1", "devices of the multi-process rows: auto | cpu:N | cuda | cuda:0,cuda:1")
    retrain: bool = _f(False, "also retrain the transformer for the retraining check (slow)")
    seed: int = _f(0, "seed for test-example choice, LiSSA, random removal and the engine benchmark")
    ks: tuple[int, ...] = _f((100, 1000), "kNN sizes of the speed and quality tables (clipped to N)")
    depth: int | None = _f(None, "LiSSA depth J of both presets (None: 1000 on GPU, 100 on CPU, 4 quick)")
    original_batch: int | None = _f(None, "B of the 'original' preset (None: 128 on GPU, 16 on CPU, 4 quick)")
    score_batch_size: int = _f(64, "candidates per JVP scoring batch")
    recall_ms: tuple[int, ...] = _f((10, 100), "m of R@m (top-m from full enumeration)")
    retrain_ms: tuple[int, ...] = _f((1, 5, 25), "training examples removed in the retraining check")
    retrain_examples: int = _f(2, "test examples used by the transformer retraining check")
    grid_depths: tuple[int, ...] | None = _f(None, "J values of the s_test trade-off grid")
    grid_batches: tuple[int, ...] | None = _f(None, "B values of the s_test trade-off grid")
    grid_repeats: tuple[int, ...] | None = _f(None, "T values of the s_test trade-off grid (at B=1, max J)")
    latency_default_preset: bool | None = _f(
        None, "time one click with the dashboard's unscaled default preset"
    )

    def validate(self) -> BenchConfig:
        if self.test_examples < 1:
            raise ConfigError(f"test_examples={self.test_examples!r} is invalid: allowed an integer >= 1")
        for name in ("ks", "recall_ms", "retrain_ms"):
            if not getattr(self, name) or min(getattr(self, name)) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r} is invalid: allowed integers >= 1")
        return self

    def resolved(self, on_gpu: bool) -> BenchConfig:
        """Every ``None`` replaced by the setting for this hardware (recorded in ``bench.json``)."""
        tier = "quick" if self.quick else ("gpu" if on_gpu else "cpu")
        pick = {"quick": 0, "cpu": 1, "gpu": 2}[tier]
        defaults = {
            "depth": (4, 100, 1000)[pick],
            "original_batch": (4, 16, 128)[pick],
            "grid_depths": ((1, 4), (10, 30, 100), (100, 300, 1000))[pick],
            "grid_batches": ((1, 4), (1, 4, 16), (1, 16, 128))[pick],
            "grid_repeats": ((1, 2), (1, 2, 4), (1, 4))[pick],
            "latency_default_preset": tier != "quick",
        }
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def preset(self, name: str) -> STestConfig:
        """The 'original' (B large, T=1) or 'fast' (B=1) s_test preset at this run's depth."""
        batch = self.original_batch if name == "original" else 1
        return STestConfig(
            depth=int(self.depth or 1000), batch_size=int(batch or 1), repeats=1, seed=self.seed
        )

    def influence(self, name: str, k: int | None) -> InfluenceConfig:
        """The InfluenceConfig of one table row (``k=None``: full enumeration)."""
        return InfluenceConfig(s_test=self.preset(name), k=k, top=0, score_batch_size=self.score_batch_size)


@dataclass
class TestExample:
    """One test example of the bench: its id, record, one-row batch and whether the model got it right."""

    id: str
    record: Any
    batch: dict
    correct: bool


TestExample.__test__ = False  # type: ignore[attr-defined]  # not a pytest class


def choose_test_examples(store: Any, loaded: Any, n: int, seed: int) -> list[TestExample]:
    """``n`` non-training examples, half predicted correctly and half incorrectly (fewer of a kind when
    the workspace has fewer), sampled with ``seed`` from the training dataset's held-out split when it
    has one, else from every non-training example. The same workspace and seed give the same list."""
    model_id = loaded.model_id
    train_dataset = store.get_examples(loaded.train_ids[:1], model_id)[0].dataset
    pools = {}
    for correct in (True, False):
        rows = store.query_examples(
            dataset=train_dataset, in_training_set=False, correct=correct, model_id=model_id, limit=None
        )
        pools[correct] = rows
    if not pools[True] and not pools[False]:
        pools = {
            c: store.query_examples(in_training_set=False, correct=c, model_id=model_id, limit=None)
            for c in (True, False)
        }
    rows = _balanced(pools, n, random.Random(seed))
    if not rows:
        raise WorkspaceError(
            f"workspace {loaded.root} has no predicted non-training examples to benchmark on"
        )
    return [
        TestExample(r.id, r.to_record(), loaded.encode_test(r.to_record()), bool(r.correct)) for r in rows
    ]


def _balanced(pools: dict[bool, list[Any]], n: int, rng: random.Random) -> list[Any]:
    """Up to ``n // 2`` incorrect and the rest correct (topped up from the other pool when one runs out)."""
    shuffled = {c: rng.sample(rows, len(rows)) for c, rows in pools.items()}
    want_bad = min(len(shuffled[False]), n // 2)
    want_good = min(len(shuffled[True]), n - want_bad)
    want_bad = min(len(shuffled[False]), n - want_good)
    return shuffled[True][:want_good] + shuffled[False][:want_bad]


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), wall-clock seconds)``."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def spread(values: Sequence[float]) -> dict[str, float | int]:
    """Median, quartiles, min, max, mean and count of timings (seconds)."""
    xs = sorted(float(v) for v in values)
    if not xs:
        return {"n": 0}
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return {
        "n": len(xs),
        "median": q[1],
        "q1": q[0],
        "q3": q[2],
        "min": xs[0],
        "max": xs[-1],
        "mean": statistics.fmean(xs),
    }


def mean_std(values: Sequence[float]) -> dict[str, float | int | None]:
    """Mean and (population) standard deviation of the finite values; None when there are none."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.pstdev(xs), "n": len(xs)}


def groups(examples: Sequence[TestExample]) -> dict[str, list[int]]:
    """Positions of the test examples in each group: ``all``, ``correct``, ``incorrect``."""
    return {
        "all": list(range(len(examples))),
        "correct": [i for i, e in enumerate(examples) if e.correct],
        "incorrect": [i for i, e in enumerate(examples) if not e.correct],
    }


def clip(values: Sequence[int], n: int) -> list[int]:
    """Sorted distinct values, each clipped to ``n`` (kNN sizes and m larger than the training set)."""
    return sorted({min(int(v), n) for v in values})
