"""``fastif bench --section damping`` (issue 28): how the influence changes with the damping μ of s_test.

For each test example (half predicted correctly, seeded: :func:`~fastif_core.benchmarks.common.choose_test_examples`)
and each μ of the sweep, largest first, s_test = (G_b + μI)⁻¹ ∇ℓ(z_test) is solved with the preset's
Gauss-Newton CG (``STestConfig.preset(preset, mu=μ)``: the seeded batch of 64, to a 1e-3 residual) and
scored on the test's k nearest candidates. Each (μ, test) cell is compared with

- the plain gradient dot product ``I_dot(z) = -∇ℓ(z_test)·∇ℓ(z)`` on the same candidates (``vs_dot``), and
- the preset's own μ (``base_mu``, 50, always part of the sweep) (``vs_base``),

by Pearson, Spearman, Kendall and the top-10 helpful / harmful overlap, and reports

- ``curvature_share = 1 - pearson(I_μ, I_dot)²``: the share of the variance of I_μ over the candidates
  that no affine function of the dot product explains, i.e. what the curvature term adds to the ranking
  (0 in the μ-dominated limit I_μ → I_dot/μ; 1 when I_μ is uncorrelated with I_dot);
- ``limit_rel_error = ‖I_μ - I_dot/μ‖ / ‖I_μ‖``: the distance from that limit, scale included (≈ λ/μ
  for large μ, λ the curvature along the gradients);
- the solver's ``iterations`` (curvature products), ``residual``, ``converged`` and ``seconds``.

Going down the sweep, a test stops at the first μ whose solve raises a
:class:`~fastif_core.errors.SolverError` (recorded as ``error``) or does not reach its tolerance within
``depth`` iterations (for the direct solve: whose residual stays above CG's tolerance, 1e-3) (recorded
with ``converged`` false and left out of the summary's metrics); the smaller
μ of that test are recorded as ``skipped``. Summaries: per μ, mean ± std over the tests by ``all`` /
``correct`` / ``incorrect``.

Resumable: every cell (the influence values, the solver's statistics and seconds; the dot product too)
is a JSON file under ``OUT/damping-cache/``, keyed by the checkpoint's content (``model_key``), the test
id, the candidates, μ and every solver setting; a re-run with the same ``--out`` reads them back and
recomputes nothing (``computed`` counts the cells solved by this run, ``cached`` those read back).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fastif_core.benchmarks.common import TestExample, groups, mean_std, timed
from fastif_core.benchmarks.quality import correlations
from fastif_core.benchmarks.solvers import file_slug, model_key, overlap
from fastif_core.config import STestConfig, config_hash, to_dict
from fastif_core.engine.examples import Examples
from fastif_core.engine.influence import test_gradient
from fastif_core.engine.objective import Objective
from fastif_core.engine.scoring import score_candidates, score_many
from fastif_core.engine.solvers import solve
from fastif_core.errors import ConfigError, SolverError
from fastif_core.progress import Progress, ignore

DEFAULT_MUS = (50.0, 5.0, 0.5, 0.05)
METRICS = ("pearson", "spearman", "kendall", "top10_helpful", "top10_harmful")


# ------------------------------------------------------------------------------------------------ metrics
def curvature_share(influence: Tensor, dot: Tensor) -> float | None:
    """``1 - pearson(influence, dot)²`` over the candidates: the share of Var(influence) not explained by the
    best affine fit ``a + b·dot`` (None when a correlation is undefined: fewer than 3 or constant values)."""
    r = correlations(influence, dot)["pearson"]
    return None if r is None else 1.0 - r * r


def limit_rel_error(influence: Tensor, dot: Tensor, mu: float) -> float:
    """``‖influence - dot/μ‖ / ‖influence‖``: the distance from the μ-dominated limit (I_μ → I_dot/μ)."""
    x = influence.double()
    return float((x - dot.double() / mu).norm() / x.norm().clamp_min(1e-300))


def agreement(a: Tensor, b: Tensor) -> dict[str, float | None]:
    """Pearson, Spearman, Kendall and the top-10 helpful / harmful overlap of two score vectors."""
    top = overlap(a, b, 10)
    return {**correlations(a, b), "top10_helpful": top["helpful"], "top10_harmful": top["harmful"]}


# ------------------------------------------------------------------------------------------------ cells
class CellCache:
    """One JSON file per cell under ``directory``, named by its key (``fixed`` fields plus the cell's own)."""

    def __init__(self, directory: Path, fixed: dict[str, Any]) -> None:
        self.directory, self.fixed = directory, fixed
        self.computed = self.cached = 0

    def path(self, fields: dict[str, Any]) -> Path:
        key = {**self.fixed, **fields}
        return self.directory / f"{file_slug(str(key['test']))}-{fields['cell']}-{config_hash(key)}.json"

    def has(self, fields: dict[str, Any]) -> bool:
        return self.path(fields).exists()

    def put(self, fields: dict[str, Any], cell: dict[str, Any]) -> None:
        """Store a computed cell (atomically)."""
        path = self.path(fields)
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # processes sharing the cache never share a tmp file
        tmp.write_text(json.dumps({"key": {**self.fixed, **fields}, **cell}))
        tmp.replace(path)
        self.computed += 1

    def get(self, fields: dict[str, Any], compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The stored cell of ``fields``, or ``compute()`` written first (atomically) when absent."""
        path = self.path(fields)
        if path.exists():
            self.cached += 1
            return json.loads(path.read_text())
        self.put(fields, compute())
        return json.loads(path.read_text())  # the same floats whether computed now or read back later


def cell_fields(test_id: str, candidates: Sequence[int], mu: float | None, cfg: STestConfig | None) -> dict:
    """A cell's own key fields: the test, a hash of its candidates, and the dot product or μ's solver settings."""
    where = {"test": test_id, "candidates": hashlib.sha256(str(list(candidates)).encode()).hexdigest()[:16]}
    if mu is None:
        return {**where, "cell": "dot"}
    return {**where, "cell": f"mu{mu:g}", "s_test": to_dict(cfg)}


def _solve_cell(obj: Objective, train: Examples, v: Tensor, candidates: list[int], cfg: STestConfig) -> dict:
    try:
        est, seconds = timed(lambda: solve(obj, v, train, cfg))
    except SolverError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    values = score_candidates(obj, est.s_test, train, candidates).cpu()
    st = est.stats()
    keep = ("hvps", "residual", "converged", "depth_used", "norm", "effective_damping")
    return {"values": values.double().tolist(), "seconds": seconds, "stats": {k: st[k] for k in keep}}


def direct_cells(
    obj: Objective,
    train: Examples,
    tests: Sequence[tuple[str, Tensor, list[int]]],
    mus: Sequence[float],
    base: STestConfig,
    cache: CellCache,
    progress: Progress = ignore,
) -> None:
    """Fill the cache's missing cells of ``tests`` (``(id, test gradient (P,), candidates)``) for the direct
    solver, μ-major: per μ one Woodbury factor solves every test; then per test one scoring pass
    (:func:`score_many`) scores all its new s_test at once (memory: the pending s_test, tests × μ × P)."""
    pending: dict[str, list[tuple[dict, Tensor, float, dict]]] = {}
    keep = ("hvps", "residual", "converged", "depth_used", "norm", "effective_damping")
    for j, mu in enumerate(mus):
        cfg = replace(base, mu=mu)
        for test_id, v, candidates in tests:
            progress(0.2 * j / len(mus), f"{test_id}: μ = {mu:g} (direct)")
            fields = cell_fields(test_id, candidates, mu, cfg)
            if cache.has(fields):
                continue
            try:
                est, seconds = timed(lambda cfg=cfg, v=v: solve(obj, v, train, cfg))
            except SolverError as exc:
                cache.put(fields, {"error": f"{type(exc).__name__}: {exc}"})
                continue
            st = est.stats()
            pending.setdefault(test_id, []).append((fields, est.s_test, seconds, {k: st[k] for k in keep}))
    for test_id, _, candidates in tests:
        cells = pending.pop(test_id, [])
        if not cells:
            continue
        progress(0.2, f"{test_id}: scoring {len(cells)} μ at once")
        values = score_many(obj, torch.stack([c[1] for c in cells]), train, candidates).cpu()
        for (fields, _, seconds, st), row in zip(cells, values, strict=True):
            cache.put(fields, {"values": row.double().tolist(), "seconds": seconds, "stats": st})


def _dot_cell(obj: Objective, train: Examples, v: Tensor, candidates: list[int]) -> dict:
    values, seconds = timed(lambda: score_candidates(obj, v, train, candidates).cpu())
    return {"values": values.double().tolist(), "seconds": seconds}


def tolerance(base: STestConfig) -> float:
    """The relative residual a cell must reach: the solver's own tolerance, or for a solver without one (the
    direct solve) the default preset's (CG's 1e-3), so both solvers are judged alike."""
    return base.tolerance if base.tolerance > 0 else STestConfig.preset("default").tolerance


def converged(stats: dict[str, Any], base: STestConfig) -> bool:
    """Whether a solve's residual reached :func:`tolerance` (float32 direct solves lose digits as μ falls)."""
    return stats.get("residual") is not None and stats["residual"] <= tolerance(base)


def sweep_mus(mus: Sequence[float], base_mu: float) -> list[float]:
    """The sweep's μ, largest first, with the base μ always in it."""
    return sorted({float(m) for m in mus} | {float(base_mu)}, reverse=True)


def sweep_example(
    obj: Objective,
    train: Examples,
    v: Tensor,
    candidates: list[int],
    mus: Sequence[float],
    base: STestConfig,
    cache: CellCache,
    test_id: str,
    progress: Progress = ignore,
) -> dict[str, Any]:
    """Every μ of one test example (see the module docstring): ``{dot_seconds, cells: {f"{μ:g}": ...},
    values: {f"{μ:g}": (k,) float64}}`` (values: the converged cells' influence on the candidates). ``v (P,)``
    is the test gradient; the cells' solver settings are ``base`` with ``mu`` replaced."""
    dot_cell = cache.get(
        cell_fields(test_id, candidates, None, None), lambda: _dot_cell(obj, train, v, candidates)
    )
    dot = torch.tensor(dot_cell["values"], dtype=torch.float64)
    raw: dict[str, dict[str, Any]] = {}
    stop = None
    for i, mu in enumerate(mus):
        progress(i / len(mus), f"{test_id}: μ = {mu:g}")
        if stop is not None:
            raw[f"{mu:g}"] = {"mu": mu, "skipped": stop}
            continue
        cfg = replace(base, mu=mu)
        fields = cell_fields(test_id, candidates, mu, cfg)
        cell = cache.get(fields, lambda cfg=cfg: _solve_cell(obj, train, v, candidates, cfg))
        raw[f"{mu:g}"] = {
            "mu": mu,
            **{k: cell[k] for k in ("error", "values", "seconds", "stats") if k in cell},
        }
        if "stats" in cell:
            cell["stats"]["converged"] = converged(cell["stats"], base)
            raw[f"{mu:g}"]["stats"] = cell["stats"]
        if "error" in cell:
            stop = f"the solve at μ = {mu:g} failed"
        elif cell["stats"]["converged"] is False:
            stop = (
                f"the solve at μ = {mu:g} did not converge in {cfg.depth} iterations"
                if base.solver != "direct"
                else f"the direct solve at μ = {mu:g} left a residual above {tolerance(base):g}"
            )
    cells = _cell_metrics(raw, dot, f"{base.effective_damping:g}")
    values = {
        key: torch.tensor(cell["values"], dtype=torch.float64)
        for key, cell in raw.items()
        if "values" in cell and cell["stats"]["converged"] is not False
    }
    return {"dot_seconds": dot_cell["seconds"], "cells": cells, "values": values}


def _cell_metrics(raw: dict[str, dict[str, Any]], dot: Tensor, base_key: str) -> dict[str, dict[str, Any]]:
    """Each solved cell's values replaced by its agreement with the dot product and with the base μ."""
    ok = raw.get(base_key, {})
    base = torch.tensor(ok["values"], dtype=torch.float64) if "values" in ok else None
    out = {}
    for key, cell in raw.items():
        if "values" not in cell:
            out[key] = cell
            continue
        x = torch.tensor(cell["values"], dtype=torch.float64)
        st = cell["stats"]
        out[key] = {
            "mu": cell["mu"],
            "iterations": st["hvps"],
            "residual": st["residual"],
            "converged": st["converged"],
            "seconds": cell["seconds"],
            "norm": st["norm"],
            "vs_dot": agreement(x, dot),
            "vs_base": None if base is None else agreement(x, base),
            "curvature_share": curvature_share(x, dot),
            "limit_rel_error": limit_rel_error(x, dot, cell["mu"]),
        }
    return out


# ------------------------------------------------------------------------------------------------ summary
def summarize(tests: Sequence[dict[str, Any]], mus: Sequence[float]) -> dict[str, Any]:
    """Per μ and group (all / correct / incorrect): mean±std of every metric over the converged cells, the
    median iterations and seconds, and how many cells ran, did not converge, failed or were skipped."""
    by_group = groups([TestExample(t["id"], None, {}, t["correct"]) for t in tests])
    out: dict[str, Any] = {}
    for mu in mus:
        cells = [t["cells"][f"{mu:g}"] for t in tests]
        out[f"{mu:g}"] = {g: _summary([cells[i] for i in idx]) for g, idx in by_group.items()}
    return out


def _summary(cells: list[dict[str, Any]]) -> dict[str, Any]:
    ran = [c for c in cells if "vs_dot" in c]
    good = [c for c in ran if c["converged"] is not False]
    row: dict[str, Any] = {
        "tests": len(cells),
        "converged": len(good),
        "not_converged": len(ran) - len(good),
        "errors": sum("error" in c for c in cells),
        "skipped": sum("skipped" in c for c in cells),
        "iterations_median": statistics.median(c["iterations"] for c in ran) if ran else None,
        "seconds_median": statistics.median(c["seconds"] for c in ran) if ran else None,
        "curvature_share": mean_std([c["curvature_share"] for c in good]),
        "limit_rel_error": mean_std([c["limit_rel_error"] for c in good]),
    }
    for against in ("vs_dot", "vs_base"):
        row[against] = {m: mean_std([(c[against] or {}).get(m) for c in good]) for m in METRICS}
    return row


# ------------------------------------------------------------------------------------------------ section
def run_section(
    loaded: Any,
    examples: Sequence[TestExample],
    out_dir: Path,
    *,
    mus: Sequence[float] = DEFAULT_MUS,
    k: int = 1000,
    preset: str = "default",
    seed: int = 0,
    depth: int | None = None,
    retrain: dict[str, Any] | None = None,
    shard: tuple[int, int] = (0, 1),
    progress: Progress = ignore,
) -> dict[str, Any]:
    """The sweep on ``examples`` (see the module docstring); ``OUT/damping.json`` is rewritten after every
    test (``complete`` false until the last), the cells are kept under ``OUT/damping-cache/``. ``retrain``
    (``{"examples", "ms", "max_runs"}``) then runs the retraining check of
    :mod:`~fastif_core.benchmarks.damping_retrain` on the first ``examples`` test examples
    (``OUT/damping-retrain.json``, also under ``result["retrain"]``). ``shard = (i, n)`` sweeps only
    ``examples[i::n]`` into the shared cache and writes ``OUT/damping-shard{i}of{n}.json`` (n processes share
    the sweep; a run without a shard then reads every cell back)."""
    if shard != (0, 1) and retrain is not None:
        raise ConfigError("bench --section damping: --retrain needs the whole sweep; leave --ref-shard out")
    if retrain is not None and (not retrain["ms"] or min(retrain["ms"]) < 1 or retrain["examples"] < 1):
        raise ConfigError(
            f"bench --section damping --retrain: --retrain-ms {','.join(map(str, retrain['ms']))} and "
            f"--retrain-examples {retrain['examples']}: allowed integers >= 1"
        )
    from fastif_core.benchmarks.suite import json_safe

    started = time.perf_counter()
    base = STestConfig.preset(preset, seed=seed, **({} if depth is None else {"depth": depth}))
    mus = sweep_mus(mus, base.effective_damping)
    k = min(k, len(loaded.train))
    obj, train = loaded.objective, loaded.train
    cache = CellCache(out_dir / "damping-cache", {"model": model_key(loaded), "k": k})
    result: dict[str, Any] = {
        "settings": {
            "mus": mus,
            "base_mu": base.effective_damping,
            "k": k,
            "preset": preset,
            "s_test": to_dict(base),
        },
        "model": cache.fixed["model"],
        "num_train": len(train),
        "trainable_params": obj.num_params,
        "device": str(obj.device),
        "threads": torch.get_num_threads(),
        "tests": [],
    }

    def write(complete: bool) -> None:
        result.update(computed=cache.computed, cached=cache.cached, complete=complete)
        result["seconds"] = time.perf_counter() - started
        tmp = out_dir / f"{name}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(json_safe(result), indent=2, allow_nan=False))
        tmp.replace(out_dir / name)

    out_dir.mkdir(parents=True, exist_ok=True)
    influence = []
    share = 1.0 if retrain is None else 0.2
    part, parts = shard
    name = "damping.json" if parts == 1 else f"damping-shard{part}of{parts}.json"
    mine = [
        (i, ex, test_gradient(obj, ex.batch), loaded.nearest(ex.id, k)[0])
        for i, ex in enumerate(examples)
        if i % parts == part
    ]
    if base.solver == "direct":
        direct_cells(obj, train, [(ex.id, v, c) for _, ex, v, c in mine], mus, base, cache, progress)
    for i, ex, v, candidates in mine:
        sub = lambda f, m, i=i: progress(share * (i + f) / len(examples), m)  # noqa: E731
        found = sweep_example(obj, train, v, candidates, mus, base, cache, ex.id, sub)
        influence.append(
            {"id": ex.id, "correct": ex.correct, "candidates": candidates, "values": found.pop("values")}
        )
        result["tests"].append({"id": ex.id, "correct": ex.correct, "grad_norm": float(v.norm()), **found})
        result["summary"] = summarize(result["tests"], mus)
        write(complete=False)
    write(complete=True)
    progress(share, f"wrote {out_dir / name}")
    out = json.loads((out_dir / name).read_text())
    if retrain is not None:
        from fastif_core.benchmarks.damping_retrain import run_retraining

        chosen = retrain["examples"]
        out["retrain"] = run_retraining(
            loaded,
            examples,
            influence[:chosen],
            out_dir,
            mus=mus,
            base_mu=base.effective_damping,
            ms=retrain["ms"],
            seed=seed,
            max_runs=retrain.get("max_runs"),
            progress=lambda f, m: progress(share + (1 - share) * f, m),
        )
    return out
