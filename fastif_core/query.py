"""Questions asked of a prepared workspace: ``influence_query`` (computed once, then read from the
store) and ``list_examples``. The CLI, the worker and the benchmarks call these same functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastif_core.config import InfluenceConfig, config_hash, to_dict
from fastif_core.errors import WorkspaceError
from fastif_core.workspace import LoadedWorkspace, require_prepared

Progress = Callable[[float, str], None]
# (loaded workspace, test batch, candidate positions or None = all, config, progress) -> InfluenceResult
Runner = Callable[[LoadedWorkspace, dict, "list[int] | None", InfluenceConfig, "Progress | None"], Any]


def stored_config(cfg: InfluenceConfig) -> dict[str, Any]:
    """The settings that determine the scores, as stored with a run (``top`` only selects what is shown)."""
    data = to_dict(cfg)
    data.pop("top")
    return data


def cache_key(cfg: InfluenceConfig) -> str:
    """Hash under which a run is stored: the store hashes :func:`stored_config` the same way."""
    return config_hash(stored_config(cfg))


def serial_runner(
    loaded: LoadedWorkspace, batch: dict, candidates: list[int] | None, cfg: InfluenceConfig,
    progress: Progress | None,
) -> Any:  # fmt: skip
    """One process: test gradient, LiSSA and scoring on the workspace's device."""
    from fastif_core.influence import compute_influence

    return compute_influence(loaded.objective, batch, loaded.train, candidates, cfg, loaded.device, progress)


def _open(root: str | Path) -> tuple[Any, dict[str, Any]]:
    from fastif_core.store import Store

    manifest = require_prepared(root)
    return Store.open(root), manifest


def require_example(store: Any, example_id: str, model_id: int) -> Any:
    """The example (with ``model_id``'s prediction), or a WorkspaceError saying how to find valid ids."""
    ex = store.get_example(example_id, model_id)
    if ex is None or not ex.in_workspace:
        why = "is not in this workspace" if ex is None else "belongs to a source this workspace no longer has"
        raise WorkspaceError(f"example {example_id!r} {why} (list ids with `fastif examples`)")
    return ex


def check_request(manifest: dict[str, Any], cfg: InfluenceConfig) -> None:
    """Reject k larger than the training set before any work is done."""
    from fastif_core.errors import ConfigError

    cfg.validate()
    n = int(manifest["num_train"])
    if cfg.k is not None and cfg.k > n:
        raise ConfigError(f"k={cfg.k} is larger than the training set ({n} examples): use k <= {n} or --full")


def influence_query(
    root: str | Path, example_id: str, cfg: InfluenceConfig, *, device: str = "cpu",
    loaded: LoadedWorkspace | None = None, runner: Runner = serial_runner, progress: Progress | None = None,
    show_progress: bool = False, job_id: int | None = None, owner: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Most helpful / harmful training examples for ``example_id``; stored, and answered from the store
    when the same (model, example, settings) was computed before (``"cached": true``)."""
    store, manifest = _open(root)
    try:
        check_request(manifest, cfg)
        model_id = int(manifest["model_id"])
        example = require_example(store, example_id, model_id)
        found = store.find_influence_run(model_id, example_id, cache_key(cfg))
        if found is not None:
            return run_to_dict(store.get_influence_run(found.id), cfg.top, cached=True)
        loaded = loaded or LoadedWorkspace.load(root, device)
        bar = _tqdm(show_progress)  # after loading: a damaged workspace is one line on stderr, no bar
        report = _chain(progress, bar)
        t0 = time.perf_counter()
        positions = loaded.nearest(example_id, cfg.k)[0] if cfg.k is not None else None
        t_knn = time.perf_counter() - t0
        notes = [] if cfg.k is None or not getattr(loaded.index, "last_fallback", 0) else [
            f"the approximate index found fewer than k={cfg.k} neighbours in the cells it probes "
            f"(nprobe={loaded.index.cfg.nprobe}); they were found by exact search"]  # fmt: skip
        result = runner(loaded, loaded.encode_test(example.to_record()), positions, cfg, report)
        if bar is not None:
            bar.close()
        seconds = {"knn": t_knn, **result.seconds, "total": t_knn + result.seconds["total"]}
        scores = [(loaded.train_ids[i], float(v)) for i, v in zip(result.indices.tolist(), result.values.tolist(),
                                                                   strict=True)]  # fmt: skip
        run_id = store.save_influence_run(
            model_id, example_id, stored_config(cfg), scores,
            num_candidates=len(scores), timings=seconds, s_test_stats=result.s_test_stats, job_id=job_id,
            owner=owner,
        )  # fmt: skip
        return {**run_to_dict(store.get_influence_run(run_id), cfg.top, cached=False), "warnings": notes}
    finally:
        store.close()


def find_stored(root: str | Path, example_id: str, cfg: InfluenceConfig) -> dict[str, Any] | None:
    """The stored answer for this request, or None (no computation)."""
    store, manifest = _open(root)
    try:
        found = store.find_influence_run(int(manifest["model_id"]), example_id, cache_key(cfg))
        return run_to_dict(store.get_influence_run(found.id), cfg.top, cached=True) if found else None
    finally:
        store.close()


def run_to_dict(run: Any, top: int, *, cached: bool) -> dict[str, Any]:
    """The JSON answer of ``fastif influence`` for a stored run (``top`` 0 = every candidate)."""
    n = None if top == 0 else top

    def rows(scores: list[Any]) -> list[dict[str, Any]]:
        return [{"train_id": s.train_id, "influence": s.value, "premise": s.premise, "hypothesis": s.hypothesis,
                 "label": s.label} for s in scores]  # fmt: skip

    return {
        "example_id": run.example_id, "run_id": run.id, "model_id": run.model_id, "config": {**run.config, "top": top},
        "num_candidates": run.num_candidates, "seconds": dict(run.timings), "s_test": dict(run.s_test_stats),
        "helpful": rows(run.helpful(n)), "harmful": rows(run.harmful(n)), "cached": cached,
    }  # fmt: skip


def _tqdm(enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=1000, desc="influence", unit="‰", leave=False)


def _chain(progress: Progress | None, bar: Any) -> Progress | None:
    if progress is None and bar is None:
        return None

    def report(fraction: float, message: str) -> None:
        if bar is not None:
            bar.n = int(1000 * min(max(fraction, 0.0), 1.0))
            bar.set_postfix_str(message, refresh=True)
        if progress is not None:
            progress(fraction, message)

    return report


def list_examples(
    root: str | Path, *, dataset: str | None = None, split: str | None = None, incorrect: bool = False,
    limit: int = 20,
) -> list[dict[str, Any]]:  # fmt: skip
    """Examples with label, prediction and slice fields (the JSON of ``fastif examples``)."""
    store, manifest = _open(root)
    try:
        filters: dict[str, Any] = {"model_id": int(manifest["model_id"])}
        for key, value in (("dataset", dataset), ("split", split)):
            if value is not None:
                filters[key] = value
        if incorrect:
            filters["correct"] = False
        rows = store.query_examples(limit=limit, **filters)
    finally:
        store.close()
    return [
        {"id": r.id, "dataset": r.dataset, "split": r.split, "label": r.label, "predicted": r.predicted,
         "correct": r.correct, "confidence": r.confidence, "premise": r.premise, "hypothesis": r.hypothesis,
         **r.slices}
        for r in rows
    ]  # fmt: skip
