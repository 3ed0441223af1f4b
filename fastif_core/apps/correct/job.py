"""The ``correct`` and ``activate_model`` jobs: a correction / augmentation run on a prepared workspace,
stored once with its settings, and the switch of the active model version.

:func:`run_correction` is what ``fastif correct`` calls in process and what the worker's handler calls:
settings and slices are checked before any model work; every (method, seed) starts from a copy of the
served model (whose files are only read); the result (before/after per slice, per-iteration curves,
mean/min/max over seeds) is written once at the end, with the job's ``done`` in the same transaction,
so a cancelled run stores nothing. A repeated run is answered from the store. ``save=METHOD`` stores
that method's final model of the first seed as a new model version (:mod:`fastif_core.workspace.versions`); when
the curves are already stored only that loop is re-run, and checked to reproduce them.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fastif_core.apps.correct.config import CorrectConfig
from fastif_core.apps.correct.data import LoopData, check_disjoint, encode_labeled, select
from fastif_core.apps.correct.loop import LoopInputs, evaluate, run_loop
from fastif_core.apps.correct.pool import Pool, anchor_query, load_pool
from fastif_core.apps.correct.stored import APP
from fastif_core.apps.correct.summary import summarize
from fastif_core.config import config_hash, to_dict
from fastif_core.engine.objective import Objective, hf_forward
from fastif_core.errors import ConfigError
from fastif_core.progress import Progress, ignore
from fastif_core.store import Store
from fastif_core.store import results as res
from fastif_core.workspace import versions
from fastif_core.workspace.layout import (
    LoadedWorkspace,
    require_prepared,
    two_way_aware_cross_entropy,
)

REPRODUCE_TOL = 1e-6  # a re-run loop (to save its model) must give the stored curve to this precision


def _served_model(root: str | Path, cfg: CorrectConfig) -> int:
    manifest = require_prepared(root)
    served = int(manifest["model_id"])
    if cfg.model_id is not None and int(cfg.model_id) != served:
        raise ConfigError(
            f"model_id={cfg.model_id} is not the workspace's active model ({served}): switch to it "
            f"with `fastif versions activate {cfg.model_id}` first"
        )
    return served


def check_settings(root: str | Path, cfg: CorrectConfig) -> tuple[int, LoopData]:
    """Validate ``cfg`` against the workspace (one ConfigError line, nothing computed): the model id and the
    slices (empty slice, more anchors than the anchor pool)."""
    cfg.validate()
    model_id = _served_model(root, cfg)
    with Store.open(root) as store:
        data = select(store, cfg, model_id)
    check_disjoint(data)
    return model_id, data


def make_objective(weight_decay: float) -> Callable[[Any], Objective]:
    """The workspace's influence objective (two-way aware loss) for a copy of its model."""
    return lambda model: Objective(
        model, forward=hf_forward, loss=two_way_aware_cross_entropy, weight_decay=weight_decay
    )


def loop_inputs(loaded: LoadedWorkspace, pool: Pool, data: LoopData) -> LoopInputs:
    """Encode the anchor pool and the evaluation parts; mask pool rows equal to an evaluated pair."""
    enc = lambda rows: encode_labeled(loaded.tokenizer, rows, loaded.label_names, loaded.max_length)  # noqa: E731
    evaluated = {(ex.premise, ex.hypothesis) for part in data.parts().values() for ex in part}
    if pool.examples is None:
        allowed = torch.ones(len(pool), dtype=torch.bool)
    else:
        allowed = torch.tensor([(ex.premise, ex.hypothesis) not in evaluated for ex in pool.examples])
    anchor_ids = [ex.id for ex in data.anchor_pool]
    return LoopInputs(
        train=loaded.train,
        pool=pool.encoded,
        pool_ids=pool.ids,
        index=pool.index,
        allowed=allowed,
        anchors=enc(data.anchor_pool),
        query=lambda rows: anchor_query(loaded, [anchor_ids[r] for r in rows]),
        parts={k: enc(v) for k, v in data.parts().items() if v},
    )


def _loops(cfg: CorrectConfig, only: str | None) -> list[tuple[str, int]]:
    if only is not None:
        return [(only, cfg.seed)]
    return [(m, cfg.seed + s) for m in cfg.methods for s in range(cfg.seeds)]


def run_loops(
    loaded: LoadedWorkspace,
    inputs: LoopInputs,
    cfg: CorrectConfig,
    *,
    only: str | None = None,
    progress: Progress | None = None,
) -> tuple[dict[str, list[dict]], Any]:
    """Every (method, seed) loop from a fresh copy of the served model; returns the runs by method and the
    final model of (``cfg.save`` or ``only``, first seed)."""
    report = progress or ignore
    todo, keep_method = _loops(cfg, only), only or cfg.save
    runs: dict[str, list[dict]] = {}
    kept, factory = None, make_objective(loaded.objective.weight_decay)
    for n, (method, seed) in enumerate(todo):
        model = copy.deepcopy(loaded.model)
        sub = lambda f, m, n=n: report((n + f) / len(todo), m)  # noqa: E731
        runs.setdefault(method, []).append(
            run_loop(model, factory, inputs, method, seed, cfg, device=loaded.device, progress=sub)
        )
        if method == keep_method and seed == cfg.seed:
            kept = model
    return runs, kept


def _result(
    cfg: CorrectConfig,
    model_id: int,
    data: LoopData,
    pool: Pool,
    before: dict,
    runs: dict,
    seconds: dict[str, float],
    device: str,
    model_hash: str,
) -> dict[str, Any]:
    """The stored run. ``model_hash`` (the model's ``config_hash``: base model, training settings and data)
    names the model across workspaces, so a run made elsewhere can be imported (:mod:`.stored`)."""
    methods = {}
    for method, seeds in runs.items():
        after = {r["seed"]: r["curve"][-1] for r in seeds}
        methods[method] = {"seeds": seeds, "after": after, "summary": summarize(before, seeds)}
    return {
        "settings": to_dict(replace(cfg, save=None)),
        "model_id": model_id,
        "model_hash": model_hash,
        "kind": cfg.kind,
        "target": data.target,
        "heldout": data.heldout_name,
        "sizes": data.sizes(),
        "device": device,
        "seconds": seconds,
        "pool": {"source": pool.source, "size": len(pool), "built": pool.built, "directory": pool.directory},
        "before": before,
        "methods": methods,
    }


def run_correction(
    root: str | Path,
    cfg: CorrectConfig,
    *,
    device: str = "cpu",
    progress: Progress | None = None,
    loaded: LoadedWorkspace | None = None,
    job_id: int | None = None,
    owner: str | None = None,
) -> dict[str, Any]:
    """Run (or read from the store) the correction of ``cfg``; returns the stored result dict with
    ``run_id``, ``cached`` and, with ``cfg.save``, ``saved`` (the new model version)."""
    model_id, data = check_settings(root, cfg)
    with Store.open(root) as store:
        found = store.find_app_result(APP, cfg.result_key(), model_id=model_id, kind=cfg.kind)
        model_hash = store.get_model(model_id).config_hash
    if found is not None and cfg.save is None:
        return _finish(root, found, cfg, None, job_id, owner, cached=True)
    report = progress or ignore
    report(0.0, "loading the workspace")
    t0 = time.perf_counter()
    loaded = loaded or LoadedWorkspace.load(root, device)
    pool = load_pool(loaded, cfg.pool, size=cfg.pool_size)
    inputs = loop_inputs(loaded, pool, data)
    before = evaluate(loaded.model, inputs.parts, device=loaded.device)
    t1 = time.perf_counter()
    runs, kept = run_loops(loaded, inputs, cfg, only=cfg.save if found else None, progress=report)
    seconds = {"setup": t1 - t0, "loops": time.perf_counter() - t1, "total": time.perf_counter() - t0}
    saved = _save(root, loaded, cfg, model_id, kept, found, runs) if cfg.save else None
    if found is None:
        result = _result(cfg, model_id, data, pool, before, runs, seconds, loaded.device, model_hash)
        return {
            **_store(root, cfg, model_id, result, saved, job_id, owner).result,
            "cached": False,
            "saved": saved,
        }
    return _finish(root, found, cfg, saved, job_id, owner, cached=False)


def _ref(run_id: int, cached: bool, saved: dict | None) -> dict[str, Any]:
    """The job's result: the stored run, and the saved model version."""
    return {
        "correction_id": run_id,
        "cached": cached,
        **({"saved_model_id": saved["model_id"]} if saved else {}),
    }


def _store(
    root: str | Path,
    cfg: CorrectConfig,
    model_id: int,
    result: dict[str, Any],
    saved: dict | None,
    job_id: int | None,
    owner: str | None,
) -> Any:
    """Write the run once; with a job, its ``done`` lands in the same transaction (LeaseLostError: nothing)."""
    args = (APP, model_id, replace(cfg, save=None), result, cfg.kind)
    with Store.open(root) as store:
        if job_id is None:
            info = store.save_app_result(
                APP, args[2], result, model_id=model_id, kind=cfg.kind, config_hash=cfg.result_key()
            )
            return replace(info, result={**info.result, "run_id": info.id})
        stored: dict[str, Any] = {}

        def writer(s: Any) -> dict[str, Any]:
            stored["info"] = res.app_info(APP, res.save_app_result(s, *args, job_id, cfg.result_key()))
            return _ref(stored["info"].id, False, saved)

        store.complete_job(job_id, owner or "", writer)
    info = stored["info"]
    return replace(info, result={**info.result, "run_id": info.id})


def _save(
    root: str | Path,
    loaded: LoadedWorkspace,
    cfg: CorrectConfig,
    parent: int,
    model: Any,
    found: Any,
    runs: dict,
) -> dict[str, Any]:
    """The final model of ``cfg.save`` (first seed) as a model version, with its lineage; a re-run loop must
    reproduce the stored curve."""
    run = runs[cfg.save][0]
    reproduced = None
    if found is not None:
        stored = found.result["methods"][cfg.save]["seeds"][0]["curve"]
        reproduced = _close(stored, run["curve"])
        if not reproduced:
            raise ConfigError(
                f"save={cfg.save!r}: re-running the loop did not reproduce the stored curve; "
                "run the correction again without the cached result"
            )
    key = config_hash(
        {"correction": cfg.result_key(), "method": cfg.save, "seed": cfg.seed, "parent": parent}
    )
    lineage = {
        "method": f"correction:{cfg.save}",
        "settings": to_dict(replace(cfg, save=None)),
        "seed": cfg.seed,
        "steps": cfg.iterations,
        "picks": run["picks"],
        "correction_key": cfg.result_key(),
        "kind": cfg.kind,
        "pool": cfg.pool,
    }
    tcfg = served_train_config(loaded)
    info = versions.save_version(
        root, parent, model, loaded.tokenizer, tcfg, lineage, key, device=loaded.device
    )
    return {
        "model_id": info.id,
        "name": info.name,
        "method": cfg.save,
        "seed": cfg.seed,
        "reproduced": reproduced,
    }


def served_train_config(loaded: LoadedWorkspace) -> Any:
    """The served checkpoint's TrainConfig (a version keeps its parent's architecture and freezing)."""
    import json

    from fastif_core.config import TrainConfig, from_dict
    from fastif_core.modeling.classifier import TRAIN_META
    from fastif_core.workspace.layout import WorkspacePaths

    meta = WorkspacePaths.of(loaded.root, loaded.manifest).model_dir(loaded.model_id) / TRAIN_META
    return from_dict(TrainConfig, json.loads(meta.read_text())["train_config"])


def _close(a: list[dict], b: list[dict]) -> bool:
    for x, y in zip(a, b, strict=True):
        for part, metrics in x.items():
            for name, value in metrics.items():
                other = y[part][name]
                if (value is None) != (other is None) or (
                    value is not None and abs(value - other) > REPRODUCE_TOL
                ):
                    return False
    return True


def _finish(
    root: str | Path,
    found: Any,
    cfg: CorrectConfig,
    saved: dict | None,
    job_id: int | None,
    owner: str | None,
    *,
    cached: bool,
) -> dict[str, Any]:
    if job_id is not None:
        with Store.open(root) as store:
            store.complete_job(job_id, owner or "", result=_ref(found.id, cached, saved))
    return {**found.result, "run_id": found.id, "cached": cached, "saved": saved}


# ---- job handlers (the worker imports fastif_core.apps, which imports this module) --------------------
def run_correct_job(ctx: Any) -> dict[str, Any]:
    """``correct`` jobs on rank 0's device; progress (method, seed, iteration) is the job's message."""
    out = run_correction(
        ctx.root,
        ctx.params,
        device=ctx.group.device,
        progress=ctx.progress,
        job_id=ctx.job.id,
        owner=ctx.owner,
    )
    return {
        "correction_id": out["run_id"],
        "cached": out["cached"],
        **({"saved_model_id": out["saved"]["model_id"]} if out["saved"] else {}),
    }


def run_activate_job(ctx: Any) -> dict[str, Any]:
    """``activate_model`` jobs: build the version's features and index if missing, then switch."""
    manifest = versions.activate(
        ctx.root, ctx.params.model_id, device=ctx.group.device, progress=ctx.progress
    )
    return {"model_id": manifest["model_id"], "build": manifest.get("build")}
