"""s_test solvers side by side on a trained workspace: error vs seconds against a tight reference, the
influence each one gives, one click's latency per preset, and the L2 convention of the gradients.

Reference: the paper's LiSSA (J=1000, B=1, d=5e-3, s=1e4) averaged over ``ref_repeats`` repetitions with
seeds ``REF_SEED + t``, one repetition at a time, each stored as safetensors under ``cache_dir`` so a run
that is stopped resumes where it was (``fastif bench --section solvers`` again with the same ``--out``).
Its own tightness is reported: the influence Pearson between the means of its even and odd repetitions.

Each solver is run once per test example (T = 1 unless its config says otherwise, seeds distinct from
the reference's) and compared on the k nearest candidates: relative error ``‖s - s_ref‖ / ‖s_ref‖``,
cosine, influence Pearson, and the overlap of the top-10 helpful and top-10 harmful sets. A solver that
refuses (divergence, non-positive curvature) is recorded with its error message. ``choice`` names the
fastest solver whose mean Pearson >= 0.99 and mean top-10 overlap >= 0.8 (the engine's default is set
from it), or null when none qualifies.
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from fastif_core.benchmarks.common import TestExample, mean_std, timed
from fastif_core.benchmarks.quality import correlations, top_sets
from fastif_core.benchmarks.speed import latency
from fastif_core.config import InfluenceConfig, STestConfig, config_hash, to_dict
from fastif_core.engine.influence import test_gradient
from fastif_core.engine.scoring import score_candidates, score_many
from fastif_core.engine.solvers import solve
from fastif_core.errors import SolverError
from fastif_core.progress import Progress, ignore
from fastif_core.workspace.layout import WorkspacePaths

REF_SEED = 1000  # reference repetitions use seeds REF_SEED + t, disjoint from the solvers' seeds
PEARSON_FLOOR, OVERLAP_FLOOR = 0.99, 0.8


def default_solvers() -> dict[str, STestConfig]:
    """The settings compared: the paper's LiSSA, batched LiSSA, Gauss-Newton CG at three batch sizes, the
    exact Gauss-Newton solve of the B=64 system, and CG on the true Hessian (expected to meet negative
    curvature on a trained transformer)."""
    return {
        "paper": STestConfig.fast(),
        "lissa_batched": STestConfig.lissa_batched(),
        "gn_cg_b16": STestConfig.gauss_newton_cg(batch_size=16),
        "gn_cg_b32": STestConfig.gauss_newton_cg(batch_size=32),
        "gn_cg_b64": STestConfig.gauss_newton_cg(batch_size=64),
        "gn_direct_b64": STestConfig.gauss_newton_direct(batch_size=64),
        "hessian_cg_b16": STestConfig.gauss_newton_cg(batch_size=16, curvature="hessian"),
    }


def file_slug(text: str) -> str:
    """``text`` with every run of characters other than letters, digits, ``_.-`` as one ``_`` (a file name)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def reference(
    loaded: Any,
    ex: TestExample,
    v: Tensor,
    repeats: int,
    cache_dir: Path,
    progress: Progress,
    ref_cfg: STestConfig | None = None,
) -> tuple[Tensor, float]:
    """``(the repetitions (T, P), median seconds per repetition)`` of
    ``ref_cfg`` (default: the paper's LiSSA) over ``repeats`` repetitions with seeds ``REF_SEED + t``;
    each repetition is read from ``cache_dir`` when it was computed before (for the same settings)."""
    ref_cfg = ref_cfg or STestConfig.fast()
    reps, seconds = [], []
    for t in range(repeats):
        path = reference_repetition(loaded, ex, v, t, cache_dir, ref_cfg, progress)
        reps.append(load_file(str(path))["s_test"])
        seconds.append(_seconds_of(path))
    return torch.stack(reps), statistics.median(seconds)  # (T, P)


def reference_repetition(
    loaded: Any,
    ex: TestExample,
    v: Tensor,
    t: int,
    cache_dir: Path,
    ref_cfg: STestConfig,
    progress: Progress = ignore,
) -> Path:
    """The cached file of repetition ``t`` (seed ``REF_SEED + t``) of ``ref_cfg`` for ``ex``, computed and
    written first when missing. Keyed by the checkpoint's content (a re-trained model under the same id
    never reuses another model's reference), the settings' hash and the example id."""
    where = cache_dir / model_key(loaded) / config_hash(ref_cfg) / file_slug(ex.id)
    path = where / f"rep{t}.safetensors"
    if not path.exists():
        where.mkdir(parents=True, exist_ok=True)
        progress(0.0, f"reference {ex.id}: repetition {t + 1}")
        est, sec = timed(
            lambda: solve(loaded.objective, v, loaded.train, replace(ref_cfg, seed=REF_SEED + t))
        )
        tmp = path.with_suffix(".tmp")
        save_file({"s_test": est.s_test.cpu().contiguous()}, str(tmp), metadata={"seconds": str(sec)})
        tmp.replace(path)
    return path


def fill_references(
    loaded: Any,
    examples: Sequence[TestExample],
    repeats: int,
    cache_dir: Path,
    progress: Progress = ignore,
    ref_cfg: STestConfig | None = None,
) -> None:
    """Every example's reference repetitions, repetition-major (all examples' repetition 0, then 1, …), so
    that a stopped run leaves the same number of cached repetitions for every example."""
    ref_cfg = ref_cfg or STestConfig.fast()
    grads = {ex.id: test_gradient(loaded.objective, ex.batch) for ex in examples}
    total = max(1, repeats * len(examples))
    for t in range(repeats):
        for i, ex in enumerate(examples):
            done = t * len(examples) + i
            sub = lambda f, m, done=done: progress((done + f) / total, m)  # noqa: E731
            reference_repetition(loaded, ex, grads[ex.id], t, cache_dir, ref_cfg, sub)


def model_key(loaded: Any) -> str:
    """``model<id>-<first 12 hex digits of the sha256 of the checkpoint's safetensors>``."""
    directory = WorkspacePaths.of(loaded.root, loaded.manifest).model_dir(loaded.model_id)
    if directory not in _MODEL_KEYS:
        digest = hashlib.sha256()
        for path in sorted(directory.glob("*.safetensors")):
            with path.open("rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
        _MODEL_KEYS[directory] = f"model{loaded.model_id}-{digest.hexdigest()[:12]}"
    return _MODEL_KEYS[directory]


_MODEL_KEYS: dict[Path, str] = {}


def _seconds_of(path: Path) -> float:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return float((f.metadata() or {}).get("seconds", "nan"))


def overlap(a: Tensor, b: Tensor, m: int = 10) -> dict[str, float]:
    """Share of the top-m helpful (most negative) and top-m harmful sets that two score vectors agree on."""
    ta, tb = top_sets(a, m), top_sets(b, m)
    return {kind: len(ta[kind] & tb[kind]) / max(1, len(ta[kind])) for kind in ("helpful", "harmful")}


def compare_example(
    loaded: Any,
    ex: TestExample,
    solvers: dict[str, STestConfig],
    ref_repeats: int,
    k: int,
    cache_dir: Path,
    progress: Progress,
    ref_cfg: STestConfig | None = None,
) -> dict[str, Any]:
    """Every solver on one test example against the reference (see the module docstring)."""
    obj, train = loaded.objective, loaded.train
    v = test_gradient(obj, ex.batch)
    reps, ref_seconds = reference(loaded, ex, v, ref_repeats, cache_dir, progress, ref_cfg)
    ref = reps.mean(0)
    candidates = loaded.nearest(ex.id, min(k, len(train)))[0]
    score = lambda s: score_candidates(obj, s, train, candidates, 64).cpu()  # noqa: E731
    rep_scores = score_many(obj, reps, train, candidates, 64).cpu()  # (T, k): scores are linear in s
    ref_scores = rep_scores.mean(0)
    halves = [rep_scores[0::2].mean(0), rep_scores[1::2].mean(0)] if ref_repeats > 1 else None
    out = {
        "id": ex.id,
        "correct": ex.correct,
        "grad_norm": float(v.norm()),
        "candidates": len(candidates),
        "reference": {
            "repeats": ref_repeats,
            "seconds_per_repeat": ref_seconds,
            "cos_with_gradient": _cos(ref, v),
            "halves_pearson": correlations(*halves)["pearson"] if halves else None,
            "halves_overlap": overlap(*halves) if halves else None,
            "held_out_repetition": held_out_repetition(reps, rep_scores),
        },
        "solvers": {},
    }
    for i, (name, cfg) in enumerate(solvers.items()):
        progress(i / len(solvers), f"{ex.id}: solver {name}")
        out["solvers"][name] = _one_solver(obj, train, v, cfg, ref, ref_scores, score)
    return out


def held_out_repetition(reps: Tensor, rep_scores: Tensor) -> dict[str, Any] | None:
    """One reference repetition (a paper-preset run) against the mean of the other T−1, for every t:
    mean±std of Pearson, top-10 overlaps and relative s_test error — what one run of the paper's LiSSA
    achieves against a (T−1)-repetition reference, at no extra cost. None when T < 2."""
    t = len(reps)
    if t < 2:
        return None
    rows = []
    for i in range(t):
        others = torch.cat([reps[:i], reps[i + 1 :]]).mean(0)
        other_scores = torch.cat([rep_scores[:i], rep_scores[i + 1 :]]).mean(0)
        rows.append(
            {
                "pearson": correlations(rep_scores[i], other_scores)["pearson"],
                "overlap": overlap(rep_scores[i], other_scores),
                "rel_error": float((reps[i] - others).double().norm() / others.double().norm()),
            }
        )
    return {
        "repeats_in_reference": t - 1,
        "pearson": mean_std([r["pearson"] for r in rows]),
        "overlap_helpful": mean_std([r["overlap"]["helpful"] for r in rows]),
        "overlap_harmful": mean_std([r["overlap"]["harmful"] for r in rows]),
        "rel_error": mean_std([r["rel_error"] for r in rows]),
    }


def _one_solver(
    obj: Any, train: Any, v: Tensor, cfg: STestConfig, ref: Tensor, ref_scores: Tensor, score: Any
) -> dict:
    try:
        est, seconds = timed(lambda: solve(obj, v, train, cfg))
    except SolverError as exc:
        return {"config": to_dict(cfg), "error": str(exc)}
    scores = score(est.s_test)
    return {
        "config": to_dict(cfg),
        "seconds": seconds,
        "stats": est.stats(),
        "rel_error": float((est.s_test - ref).double().norm() / ref.double().norm()),
        "cos_with_reference": _cos(est.s_test, ref),
        "pearson": correlations(scores, ref_scores)["pearson"],
        "spearman": correlations(scores, ref_scores)["spearman"],
        "overlap": overlap(scores, ref_scores),
    }


def _cos(a: Tensor, b: Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def summarize(per_example: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Per solver: mean±std of Pearson, overlaps and errors, median seconds and HVPs, failures; the choice."""
    table = {}
    for name in names:
        ok = [e["solvers"][name] for e in per_example if "error" not in e["solvers"][name]]
        failed = [e["solvers"][name]["error"] for e in per_example if "error" in e["solvers"][name]]
        table[name] = {
            "runs": len(ok),
            "failures": failed,
            "seconds_median": statistics.median(r["seconds"] for r in ok) if ok else None,
            "hvps_median": statistics.median(r["stats"]["hvps"] for r in ok) if ok else None,
            "pearson": mean_std([r["pearson"] for r in ok]),
            "rel_error": mean_std([r["rel_error"] for r in ok]),
            "overlap_helpful": mean_std([r["overlap"]["helpful"] for r in ok]),
            "overlap_harmful": mean_std([r["overlap"]["harmful"] for r in ok]),
        }
        row = table[name]
        row["meets"] = (
            bool(ok)
            and not failed
            and row["pearson"]["mean"] >= PEARSON_FLOOR
            and min(row["overlap_helpful"]["mean"], row["overlap_harmful"]["mean"]) >= OVERLAP_FLOOR
        )
    qualified = [n for n in names if table[n]["meets"]]
    choice = min(qualified, key=lambda n: table[n]["seconds_median"]) if qualified else None
    return {"table": table, "choice": choice, "floors": {"pearson": PEARSON_FLOOR, "overlap": OVERLAP_FLOOR}}


def l2_convention(loaded: Any, ex: TestExample, cfg: STestConfig, k: int) -> dict[str, Any]:
    """Sign balance over the k nearest and rank correlation, with and without the L2 term in the gradients."""
    obj, train = loaded.objective, loaded.train
    candidates = loaded.nearest(ex.id, min(k, len(train)))[0]
    values = {}
    for conv in ("none", "test_and_train"):
        icfg = InfluenceConfig(s_test=cfg, gradient_l2=conv)
        v = test_gradient(obj, ex.batch, include_l2=icfg.test_l2)
        s = solve(obj, v, train, cfg).s_test
        values[conv] = score_candidates(obj, s, train, candidates, 64, include_l2=icfg.train_l2).cpu()
    helpful = {c: int((x < 0).sum()) for c, x in values.items()}
    return {
        "id": ex.id,
        "correct": ex.correct,
        "candidates": len(candidates),
        "helpful": helpful,
        "grad_norm": float(test_gradient(obj, ex.batch).norm()),
        **{
            f"rank_{m}": correlations(values["none"], values["test_and_train"])[m]
            for m in ("pearson", "spearman")
        },
        "overlap": overlap(values["none"], values["test_and_train"]),
    }


PARTS = ("reference", "compare", "l2", "click")


def run_solver_section(
    loaded: Any,
    examples: Sequence[TestExample],
    out_dir: Path,
    *,
    ref_repeats: int = 8,
    k: int = 1000,
    l2_examples: Sequence[TestExample] = (),
    solvers: dict[str, STestConfig] | None = None,
    click: bool = True,
    progress: Progress = ignore,
    ref_cfg: STestConfig | None = None,
    parts: Sequence[str] = PARTS,
    ref_shard: tuple[int, int] = (0, 1),
) -> dict[str, Any]:
    """The section's ``parts`` (default all: fill the references, compare the solvers, the L2 convention,
    one click's latency). ``out_dir/solvers.json`` is rewritten after every step (a stop loses nothing);
    the results of parts that do not run are kept from an earlier run (same model, k and reference).
    ``ref_shard = (i, n)`` fills the references of ``examples[i::n]`` only (n processes share the work)."""
    solvers = solvers or default_solvers()
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "model": model_key(loaded),
        "k": k,
        "ref_repeats": ref_repeats,
        "reference": to_dict(ref_cfg or STestConfig.fast()),
        "solvers": {n: to_dict(c) for n, c in solvers.items()},
        "num_train": len(loaded.train),
        "trainable_params": loaded.objective.num_params,
        "threads": torch.get_num_threads(),
        "examples": [],
    }
    result.update(_kept(out_dir, result, parts))
    if "reference" in parts:
        shard, shards = ref_shard
        fill_references(
            loaded,
            list(examples)[shard::shards],
            ref_repeats,
            out_dir / "reference",
            lambda f, m: progress(0.5 * f, m),
            ref_cfg,
        )
    if "compare" in parts:
        result["examples"] = []
        for i, ex in enumerate(examples):
            sub = lambda f, m, i=i: progress(0.5 + 0.5 * (i + f) / (len(examples) + 2), m)  # noqa: E731
            result["examples"].append(
                compare_example(loaded, ex, solvers, ref_repeats, k, out_dir / "reference", sub, ref_cfg)
            )
            result["summary"] = summarize(result["examples"], list(solvers))
            _write(out_dir, result)
    if l2_examples and "l2" in parts:
        progress((len(examples) + 1) / (len(examples) + 2), "L2 convention")
        result["l2_convention"] = []
        for ex in l2_examples:
            result["l2_convention"].append(l2_convention(loaded, ex, STestConfig.default(), 100))
            _write(out_dir, result)
    if click and "click" in parts:
        result["latency"] = {}
        for name, c in (("default", STestConfig.default()), ("paper", STestConfig.fast())):
            progress(len(examples) / (len(examples) + 2), f"one click with the {name} preset")
            result["latency"][name] = latency(loaded, examples[0], InfluenceConfig(s_test=replace(c), k=k))
            _write(out_dir, result)
    _write(out_dir, result)
    return result


def _kept(out_dir: Path, result: dict[str, Any], parts: Sequence[str]) -> dict[str, Any]:
    """From an earlier ``solvers.json`` of the same model, k and reference settings: the results of the parts
    that do not run now (``examples``/``summary``/``ref_repeats`` for compare, ``l2_convention``, ``latency``)."""
    path = out_dir / "solvers.json"
    try:
        old = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        return {}
    if any(old.get(key) != result[key] for key in ("model", "k", "reference")):
        return {}
    keep = {
        "compare": ("examples", "summary", "ref_repeats", "solvers"),
        "l2": ("l2_convention",),
        "click": ("latency",),
    }
    return {key: old[key] for part, keys in keep.items() if part not in parts for key in keys if key in old}


def _write(out_dir: Path, result: dict[str, Any]) -> None:
    tmp = out_dir / "solvers.json.tmp"
    tmp.write_text(json.dumps(result, indent=2, default=_finite))
    tmp.replace(out_dir / "solvers.json")


def _finite(value: Any) -> Any:
    return str(value)
