"""``fastif bench --section sketch`` (issue 27): gradient sketches against exact influence over all N.

Parts (``--sketch-parts``, each kept in ``OUT/sketch.json`` when another part is re-run):

- ``reference``: exact influence of the test examples over every training example (``--full``, the
  ``--sketch-reference`` preset: Gauss-Newton on the seeded batch of 64, μ = 50), one stored influence
  matrix (``fastif matrix --full``; resumable, and read back when it exists).
- ``build``: every sketch variant (``--sketch-ks`` × ``--sketch-projections``, the biases and LayerNorm
  parameters kept exactly at ``--sketch-small-k``, Monte-Carlo rows at ``--sketch-mc-k``) in ONE stacked
  build (the backward passes shared); seconds, peak RSS, disk per index; and one single-variant build of
  ``--sketch-time-examples`` examples at the first k, extrapolated to N (the build cost of one index).
- ``compare``: per variant × curvature (Gauss-Newton over all N, over the exact path's seeded batch, the
  identity) × stored dtype (float32, float16): Pearson, Spearman, top-10 / top-100 overlaps (helpful,
  harmful) against the reference, and the recall of the reference's top-100 helpful / harmful in the
  sketch's top-k and in the kNN's k nearest (k ∈ ``--sketch-recall-ks``), by all / correct / incorrect.
- ``click``: one warm click at ``--sketch-click-k`` (test gradient, solve, product over N, RelatIF's
  self-influences once) and the exact re-rank of the union of the sketch's top-100 helpful and harmful
  (the default preset); the ``--sketch-matrix-tests`` × N matrix from sketches.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastif_core.config import InfluenceConfig, SketchConfig, SketchQueryConfig, STestConfig, to_dict
from fastif_core.progress import Progress

PARTS = ("reference", "build", "compare", "click")


def variants(
    objective: Any, ks: list[int], projections: list[str], small_k: int, mc_k: int
) -> dict[str, SketchConfig]:
    """The sketch settings compared, by name (``g16`` = Gaussian k = 16; ``-exact``: biases and LayerNorm kept;
    ``-mc``: Monte-Carlo Gauss-Newton rows)."""
    from fastif_core.engine.sketch import _dim_estimate

    out = {
        f"{p[0]}{k}": SketchConfig(dim=_dim_estimate(objective, k), projection=p)
        for k in ks
        for p in projections
    }
    if small_k:
        out[f"g{small_k}-exact"] = SketchConfig(dim=_dim_estimate(objective, small_k), small="exact")
    if mc_k:
        out[f"g{mc_k}-mc"] = SketchConfig(dim=_dim_estimate(objective, mc_k), rows="mc")
    return out


def reference(loaded: Any, ids: list[str], preset: str, progress: Progress | None) -> tuple[np.ndarray, dict]:
    """The exact full matrix ``(M, N)`` (stored; read back when it exists) and its timings."""
    from fastif_core.queries.matrix import influence_matrix

    cfg = InfluenceConfig(s_test=STestConfig.preset(preset), k=None)
    out = influence_matrix(loaded, ids, cfg, full=True, progress=progress, row_block=len(ids))
    return np.asarray(out.values, dtype=np.float64), {
        "matrix_id": out.matrix_id,
        "seconds": out.seconds,
        "cached": out.cached,
        "preset": preset,
    }


def build(loaded: Any, named: dict[str, SketchConfig], time_examples: int, progress: Progress | None) -> dict:
    """One stacked build of every variant, then a timed single-variant build on a slice of the training set."""
    from fastif_core.workspace.sketches import build_many

    t0 = time.perf_counter()
    indexes = build_many(loaded, list(named.values()), progress=progress)
    stacked = time.perf_counter() - t0
    per = {
        name: {**i.describe(), "passes_per_example": 2 if c.rows == "mc" else len(loaded.label_names)}
        for (name, c), i in zip(named.items(), indexes, strict=True)
    }
    first = next(iter(named.values()))
    return {
        "stacked_seconds": stacked,
        "variants": per,
        "peak_rss_mb": _rss_mb(),
        "single": _time_single(loaded, first, time_examples),
    }


def _time_single(loaded: Any, cfg: SketchConfig, n: int) -> dict[str, Any]:
    """Seconds of one index's build on the first ``n`` training examples (no storage), extrapolated to N."""
    from fastif_core.engine.examples import length_sorted_chunks
    from fastif_core.engine.sketch import build_rows, k_for_dim, make_sketch, sketch_gradients

    obj, train = loaded.objective, loaded.train
    sketch = make_sketch(obj, k_for_dim(obj, cfg.dim), cfg.projection, cfg.small, cfg.seed)
    rows = list(range(min(n, len(train))))
    out = {}
    for kind in ("exact", "mc", "gradient_only"):
        t0 = time.perf_counter()
        for chunk in length_sorted_chunks(rows, train.lengths(), cfg.batch_size):
            batch = train.collate(chunk)
            if kind == "gradient_only":
                sketch_gradients(obj, sketch, batch)
            else:
                build_rows(obj, sketch, batch, kind, torch.Generator().manual_seed(0))
        sec = time.perf_counter() - t0
        out[kind] = {
            "seconds": sec,
            "examples": len(rows),
            "extrapolated_n_seconds": sec * len(train) / len(rows),
        }
    return {"dim": sketch.dim, **out}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------------------------------ metrics
def _ranks(x: np.ndarray) -> np.ndarray:
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def _overlap(a: np.ndarray, b: np.ndarray, m: int) -> float:
    return len(set(a[:m].tolist()) & set(b[:m].tolist())) / m


def agreement(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    """Pearson, Spearman, top-10 / top-100 overlaps (helpful = most negative, harmful = most positive)."""
    gh, wh = np.argsort(got, kind="stable"), np.argsort(want, kind="stable")
    out = {
        "pearson": _pearson(got, want),
        "spearman": _pearson(_ranks(got), _ranks(want)),
        "sign_agreement": float(np.mean(np.sign(got) == np.sign(want))),
    }
    for m in (10, 100):
        out[f"top{m}_helpful"] = _overlap(gh, wh, m)
        out[f"top{m}_harmful"] = _overlap(gh[::-1], wh[::-1], m)
    return out


def recall(
    got: np.ndarray, want: np.ndarray, knn: list[int], ks: list[int], m: int = 100
) -> dict[str, float]:
    """Share of the reference's top-m helpful / harmful in the sketch's top-k of the same sign, in its top-k by
    |I| (one set of k, as the kNN's), and in the kNN's k nearest."""
    wh, gh = np.argsort(want, kind="stable"), np.argsort(got, kind="stable")
    best = {"helpful": set(wh[:m].tolist()), "harmful": set(wh[::-1][:m].tolist())}
    by_abs = np.argsort(-np.abs(got), kind="stable")
    out = {}
    for k in ks:
        signed = {"helpful": set(gh[:k].tolist()), "harmful": set(gh[::-1][:k].tolist())}
        for side, truth in best.items():
            out[f"sketch_k{k}_{side}"] = len(truth & signed[side]) / m
            out[f"sketch_abs_k{k}_{side}"] = len(truth & set(by_abs[:k].tolist())) / m
            out[f"knn_k{k}_{side}"] = len(truth & set(knn[:k])) / m
    return out


def summarize(rows: list[dict[str, float]], correct: list[bool]) -> dict[str, dict[str, float]]:
    """Means over all / correctly / incorrectly predicted test examples."""
    out = {}
    for name, keep in (
        ("all", [True] * len(rows)),
        ("correct", correct),
        ("incorrect", [not c for c in correct]),
    ):
        picked = [r for r, k in zip(rows, keep, strict=True) if k]
        if picked:
            out[name] = {key: float(np.mean([r[key] for r in picked])) for key in picked[0]}
            out[name]["n"] = len(picked)
    return out


# ------------------------------------------------------------------------------------------------ compare
def compare(
    loaded: Any,
    named: dict[str, SketchConfig],
    tests: list[Any],
    ref: np.ndarray,
    cfg: InfluenceConfig,
    ks: list[int],
    knn: list[list[int]],
    progress: Progress | None,
) -> dict[str, Any]:
    """Every variant × curvature × dtype against the reference (see the module docstring)."""
    from fastif_core.queries import sketch as sq

    correct = [t.correct for t in tests]
    out: dict[str, Any] = {}
    combos = [
        (n, c, e)
        for n in named
        for c, e in (("gauss_newton", "all"), ("gauss_newton", "seeded"), ("identity", "all"))
    ]
    for j, (name, curv, examples) in enumerate(combos):
        qcfg = SketchQueryConfig(named[name], curvature=curv, examples=examples, precondition=False)
        t0 = time.perf_counter()
        sess = sq.session(loaded, qcfg, cfg)
        factor_s = time.perf_counter() - t0
        values, seconds = sq.sketch_scores(sess, loaded.objective, [t.batch for t in tests], cfg)
        entry = {
            "dim": sess.sketch.dim,
            "backend": sess.backend,
            "factor_seconds": factor_s,
            "query_seconds": seconds,
        }
        for dtype in ("float32", "float16"):
            vals = values.numpy() if dtype == "float32" else _half(sess, loaded, tests, cfg)
            rows = [
                {**agreement(vals[i], ref[i]), **recall(vals[i], ref[i], knn[i], ks)}
                for i in range(len(tests))
            ]
            entry[dtype] = summarize(rows, correct)
            if dtype == "float32":
                entry["per_example"] = rows
        out[f"{name}/{curv}-{examples}"] = entry
        if progress is not None:
            progress((j + 1) / len(combos), f"compared {name} {curv}-{examples}")
        _free(sess)
    return {"variants": out}


def _half(sess: Any, loaded: Any, tests: list[Any], cfg: InfluenceConfig) -> np.ndarray:
    """The same query with the training sketches rounded to float16 (what a float16 index stores)."""
    from fastif_core.engine.sketch import sketch_gradients
    from fastif_core.engine.sketch_curvature import scores

    x = torch.cat([sketch_gradients(loaded.objective, sess.sketch, t.batch) for t in tests]).detach().cpu()
    solved = sess.factor.solve(x).float()
    blocks = [b.half().float() for b in sess.phi_blocks()]
    return scores(blocks, solved).double().numpy()


def _free(sess: Any) -> None:
    from fastif_core.queries import sketch as sq

    sq._SESSION.clear()
    del sess


# ------------------------------------------------------------------------------------------------ click
def click(
    loaded: Any,
    cfg_sketch: SketchConfig,
    tests: list[Any],
    cfg: InfluenceConfig,
    matrix_ids: list[str],
    top: int = 100,
) -> dict[str, Any]:
    """A warm click (sketch list over N, then the exact re-rank of its top candidates), RelatIF's
    self-influences, and the ``len(matrix_ids)`` × N matrix from sketches."""
    from fastif_core.engine.influence import compute_influence
    from fastif_core.queries import sketch as sq

    qcfg = SketchQueryConfig(cfg_sketch)
    t0 = time.perf_counter()
    sess = sq.session(loaded, qcfg, cfg)
    factor = time.perf_counter() - t0
    clicks = []
    for t in tests:
        values, seconds = sq.sketch_scores(sess, loaded.objective, [t.batch], cfg)
        order = torch.argsort(values[0])
        union = sorted(set(order[:top].tolist()) | set(order[-top:].tolist()))
        exact = compute_influence(loaded.objective, t.batch, loaded.train, union, cfg)
        clicks.append(
            {
                "id": t.id,
                "sketch": seconds,
                "rerank_candidates": len(union),
                "rerank": exact.seconds,
                "rerank_pearson_vs_sketch": _pearson(exact.values.numpy(), values[0, union].numpy()),
            }
        )
    t1 = time.perf_counter()
    sess.self_influence()
    relatif = time.perf_counter() - t1
    from fastif_core.store import Store

    with Store.open(loaded.root) as store:
        records = [store.get_example(i, loaded.model_id).to_record() for i in matrix_ids]
    batches = [loaded.encode_test(r) for r in records]
    t2 = time.perf_counter()
    values, seconds = sq.sketch_scores(sess, loaded.objective, batches, cfg)
    matrix = {
        "tests": len(batches),
        "shape": list(values.shape),
        "seconds": seconds,
        "wall": time.perf_counter() - t2,
    }
    return {
        "factor_seconds": factor,
        "backend": sess.backend,
        "clicks": clicks,
        "self_influence_seconds": relatif,
        "matrix": matrix,
        "peak_rss_mb": _rss_mb(),
    }


# ------------------------------------------------------------------------------------------------ section
def run_section(
    root: Path,
    out_dir: Path,
    *,
    tests_n: int,
    seed: int,
    ks: list[int],
    projections: list[str],
    small_k: int,
    mc_k: int,
    recall_ks: list[int],
    preset: str,
    parts: tuple[str, ...],
    time_examples: int,
    matrix_tests: int,
    click_k: int,
    only: tuple[str, ...] = (),
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The section (see the module docstring): ``OUT/sketch.json``, rewritten after each part."""
    from fastif_core.benchmarks.common import choose_test_examples
    from fastif_core.store import Store
    from fastif_core.workspace.layout import LoadedWorkspace

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "sketch.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    loaded = LoadedWorkspace.load(root, "cpu")
    with Store.open(root) as store:
        tests = choose_test_examples(store, loaded, tests_n, seed)
        pool = choose_test_examples(store, loaded, matrix_tests, seed + 1) if matrix_tests else []
    named = variants(loaded.objective, ks, projections, small_k, mc_k)
    cfg = InfluenceConfig(s_test=STestConfig.preset(preset), k=None)
    result["settings"] = {
        "tests": [{"id": t.id, "correct": t.correct} for t in tests],
        "preset": preset,
        "variants": {n: to_dict(c) for n, c in named.items()},
        "recall_ks": recall_ks,
        "num_train": len(loaded.train),
        "trainable_params": loaded.objective.num_params,
        "threads": torch.get_num_threads(),
    }

    def save() -> None:
        path.write_text(json.dumps(result, indent=2, default=float))

    ids = [t.id for t in tests]
    if "reference" in parts or "compare" in parts:
        ref, info = reference(loaded, ids, preset, progress)
        result["reference"] = info
        save()
    if "build" in parts:
        result["build"] = build(loaded, named, time_examples, progress)
        save()
    if "compare" in parts:
        knn = [loaded.nearest(i, max(recall_ks))[0] for i in ids]
        picked = {n: c for n, c in named.items() if not only or n in only}
        found = compare(loaded, picked, tests, ref, cfg, recall_ks, knn, progress)
        kept = (result.get("compare") or {}).get("variants", {})  # other variants' figures stay
        result["compare"] = {**found, "variants": {**kept, **found["variants"]}}
        save()
    if "click" in parts:
        click_cfg = named[f"{projections[0][0]}{click_k}"]
        exact_cfg = replace(cfg, s_test=STestConfig.default())
        result["click"] = click(loaded, click_cfg, tests[:2], exact_cfg, [e.id for e in pool])
        save()
    return result


def report(result: dict[str, Any]) -> str:
    """The headline tables as text (markdown)."""
    lines = []
    comp = (result.get("compare") or {}).get("variants", {})
    if comp:
        lines += [
            "| variant | d | dtype | Pearson all / correct / incorrect | Spearman | top-10 help / harm "
            "| top-100 help / harm | R@100 in sketch top-1000 help / harm | kNN top-1000 |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, e in comp.items():
            for dtype in ("float32", "float16"):
                s = e[dtype]
                a, c, i = s["all"], s.get("correct", {}), s.get("incorrect", {})
                k = max(int(x.split("_k")[1].split("_")[0]) for x in a if x.startswith("knn_k"))
                lines.append(
                    f"| {name} | {e['dim']} | {dtype} | {a['pearson']:.3f} / {c.get('pearson', float('nan')):.3f} / "
                    f"{i.get('pearson', float('nan')):.3f} | {a['spearman']:.3f} | {a['top10_helpful']:.2f} / "
                    f"{a['top10_harmful']:.2f} | {a['top100_helpful']:.2f} / {a['top100_harmful']:.2f} | "
                    f"{a[f'sketch_k{k}_helpful']:.2f} / {a[f'sketch_k{k}_harmful']:.2f} | "
                    f"{a[f'knn_k{k}_helpful']:.2f} / {a[f'knn_k{k}_harmful']:.2f} |"
                )
    if "click" in result:
        c = result["click"]
        for x in c["clicks"]:
            s, r = x["sketch"], x["rerank"]
            lines.append(
                f"click {x['id']}: sketch {s['total']:.2f} s (test gradient {s['test_gradient']:.2f}, solve "
                f"{s['s_test']:.3f}, product {s['scoring']:.2f}); exact re-rank of {x['rerank_candidates']} "
                f"{r['total']:.1f} s (s_test {r['s_test']:.1f}, scoring {r['scoring']:.1f})"
            )
        m = c["matrix"]
        lines.append(f"matrix {m['shape'][0]} x {m['shape'][1]} from sketches: {m['wall']:.1f} s")
    return "\n".join(lines)
