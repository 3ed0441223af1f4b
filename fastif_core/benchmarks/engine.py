"""Engine benchmarks: pure measurements returning JSON-able dicts (the ``fastif bench`` CLI wires them).

Side by side on one objective and one set of examples (the packaged MiniLM in ``fastif bench``):

- :func:`bench_forward`: plain batched forward throughput, the floor scoring is compared against;
- :func:`bench_scoring`: candidate scoring throughput, batched JVP vs the per-example backward reference,
  and how far the two timed computations' values agree (a fast path that is wrong is no speed-up);
- :func:`bench_hvp`: seconds per Hessian-vector product (and per example) for each HVP method;
- :func:`engine_benchmark`: all three plus the ratios ``jvp_speedup_vs_reference`` (target >= 5 on CPU)
  and ``scoring_cost_vs_forward`` (target <= 3).

Timings are wall-clock medians after one warm-up, with CUDA synchronised when the model is on a GPU.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from fastif_core.engine.curvature import HVP_METHODS, hvp
from fastif_core.engine.examples import Examples, length_sorted_chunks, sample_indices, to_device
from fastif_core.engine.objective import Objective
from fastif_core.engine.scoring import score_candidates, score_candidates_reference


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int = 1) -> tuple[float, Any]:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` runs, after one warm-up run, and the value
    of the last timed run."""
    out = fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _seconds(fn: Callable[[], object], device: torch.device, repeats: int = 1) -> float:
    return _timed(fn, device, repeats)[0]


def _agreement(fast: torch.Tensor, reference: torch.Tensor) -> dict:
    """How far two value vectors ``(n,)`` differ: max |difference|, relative L2 error, max |reference|."""
    a, b = fast.detach().double().cpu(), reference.detach().double().cpu()
    return {
        "candidates": len(b),
        "max_abs_diff": float((a - b).abs().max()) if len(b) else 0.0,
        "rel_err": float((a - b).norm() / b.norm()) if len(b) and float(b.norm()) > 0 else 0.0,
        "max_abs_reference": float(b.abs().max()) if len(b) else 0.0,
    }


def bench_forward(
    objective: Objective, train: Examples, indices: Sequence[int], batch_size: int = 64
) -> dict:
    """Throughput of a plain batched forward pass (no gradients), length-sorted like the scorer."""
    device = objective.device
    chunks = list(length_sorted_chunks(indices, train.lengths(), batch_size))

    def run() -> None:
        with objective.evaluating(), torch.no_grad():
            for rows in chunks:
                objective.outputs(objective.params, to_device(train.collate(rows), device))

    seconds = _seconds(run, device)
    return {
        "examples": len(indices),
        "batch_size": batch_size,
        "seconds": seconds,
        "examples_per_s": len(indices) / seconds,
    }


def bench_scoring(
    objective: Objective,
    train: Examples,
    indices: Sequence[int],
    batch_size: int = 64,
    reference_count: int = 32,
    seed: int = 0,
    s_test: torch.Tensor | None = None,
) -> dict:
    """Candidate scoring throughput: batched JVP on ``indices`` vs the backward loop on a prefix of them.

    ``s_test`` ``(P,)`` defaults to a seeded random vector. ``values`` holds both timed computations'
    influence of the prefix (``rows``) and ``agreement`` how far they differ."""
    device = objective.device
    if s_test is None:
        gen = torch.Generator().manual_seed(seed)
        s_test = torch.randn(objective.num_params, generator=gen, dtype=torch.float64)
    s_test = s_test.to(device, objective.dtype)
    ref_rows = list(indices[:reference_count])
    jvp_s, jvp_values = _timed(
        lambda: score_candidates(objective, s_test, train, indices, batch_size), device
    )
    ref_s, ref_values = _timed(lambda: score_candidates_reference(objective, s_test, train, ref_rows), device)
    jvp_rate, ref_rate = len(indices) / jvp_s, len(ref_rows) / ref_s
    prefix = jvp_values[: len(ref_rows)]  # (n_ref,): JVP values come back in the order of ``indices``
    return {
        "jvp": {
            "examples": len(indices),
            "batch_size": batch_size,
            "seconds": jvp_s,
            "examples_per_s": jvp_rate,
        },
        "reference": {"examples": len(ref_rows), "seconds": ref_s, "examples_per_s": ref_rate},
        "jvp_speedup_vs_reference": jvp_rate / ref_rate,
        "agreement": _agreement(prefix, ref_values),
        "values": {
            "rows": [int(r) for r in ref_rows],
            "jvp": prefix.detach().double().cpu().tolist(),
            "reference": ref_values.detach().double().cpu().tolist(),
        },
    }


def bench_hvp(
    objective: Objective,
    train: Examples,
    batch_sizes: Sequence[int] = (1, 8),
    methods: Sequence[str] = HVP_METHODS,
    repeats: int = 5,
    seed: int = 0,
) -> dict:
    """Median seconds per HVP and per example, for each method and batch size (same batch and vector)."""
    device = objective.device
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(objective.num_params, generator=gen, dtype=torch.float64).to(device, objective.dtype)
    out: dict = {}
    with objective.evaluating():
        for size in batch_sizes:
            batch = to_device(train.collate(sample_indices(len(train), size, gen)), device)
            for method in methods:
                sec = _seconds(
                    lambda batch=batch, method=method: hvp(objective, batch, v, method), device, repeats
                )
                out[f"{method}/B={size}"] = {"seconds_per_hvp": sec, "seconds_per_example": sec / size}
    return out


def engine_benchmark(
    objective: Objective,
    train: Examples,
    candidates: int = 256,
    batch_size: int = 64,
    reference_count: int = 32,
    hvp_batch_sizes: Sequence[int] = (1, 8),
    hvp_repeats: int = 5,
    seed: int = 0,
) -> dict:
    """Forward, scoring and HVP measurements side by side, with the two headline ratios."""
    gen = torch.Generator().manual_seed(seed)
    indices = sample_indices(len(train), min(candidates, len(train)), gen)
    forward = bench_forward(objective, train, indices, batch_size)
    scoring = bench_scoring(objective, train, indices, batch_size, reference_count, seed)
    hvps = bench_hvp(objective, train, hvp_batch_sizes, HVP_METHODS, hvp_repeats, seed)
    return {
        "device": str(objective.device),
        "trainable_params": objective.num_params,
        "threads": torch.get_num_threads(),
        "forward": forward,
        "scoring": scoring,
        "hvp": hvps,
        "jvp_speedup_vs_reference": scoring["jvp_speedup_vs_reference"],
        "scoring_cost_vs_forward": forward["examples_per_s"] / scoring["jvp"]["examples_per_s"],
    }
