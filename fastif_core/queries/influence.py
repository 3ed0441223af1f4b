"""Questions asked of a prepared workspace: ``influence_query`` (computed once, then read from the
store) and ``list_examples``. The CLI, the worker and the benchmarks call these same functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastif_core.config import InfluenceConfig, config_hash, to_dict
from fastif_core.errors import ConfigError, DataFormatError, WorkspaceError
from fastif_core.jobs import unique_ids
from fastif_core.workspace.layout import LoadedWorkspace, require_prepared

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
    from fastif_core.engine.influence import compute_influence

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


# (loaded workspace, test batches, candidate positions per test or None = all, config, progress) -> ManyInfluence
ManyRunner = Callable[
    [LoadedWorkspace, list, "list[list[int]] | None", InfluenceConfig, "Progress | None"], Any
]


def serial_many_runner(
    loaded: LoadedWorkspace, batches: list, candidates: list[list[int]] | None, cfg: InfluenceConfig,
    progress: Progress | None,
) -> Any:  # fmt: skip
    """One process: M test gradients, one batched s_test, one shared scoring pass."""
    from fastif_core.engine.influence import compute_many

    return compute_many(loaded.objective, batches, loaded.train, candidates, cfg, loaded.device, progress)


def select_examples(
    root: str | Path, *, ids: str | None = None, ids_file: str | Path | None = None, dataset: str | None = None,
    split: str | None = None, incorrect: bool = False, limit: int = 20,
) -> list[str]:  # fmt: skip
    """Example ids from ``ids`` ("a,b,c"), a file (one id per line, ``#`` comments) or the browse filters."""
    if ids is not None:
        return unique_ids(ids.split(","))
    if ids_file is not None:
        path = Path(ids_file)
        if not path.is_file():
            raise DataFormatError(f"{path}: no such file (--examples-from wants one example id per line)")
        lines = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
        return unique_ids([ln for ln in lines if ln])
    rows = list_examples(root, dataset=dataset, split=split, incorrect=incorrect, limit=limit)
    if not rows:
        raise ConfigError("examples: no example matches these filters (see `fastif examples`)")
    return [r["id"] for r in rows]


def influence_query_many(
    root: str | Path, example_ids: Sequence[str], cfg: InfluenceConfig, *, device: str = "cpu",
    loaded: LoadedWorkspace | None = None, runner: ManyRunner = serial_many_runner,
    progress: Progress | None = None, show_progress: bool = False, job_id: int | None = None,
    owner: str | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """``influence_query``'s answer for every example, in the given order, from one batched run (examples
    already stored under these settings are read back, ``"cached": true``). Every id is checked before
    any work; with ``job_id``/``owner`` the new runs and the job's ``done`` land in one transaction."""
    from fastif_core.store.batch_runs import save_runs

    store, manifest = _open(root)
    try:
        check_request(manifest, cfg)
        ids, model_id = unique_ids(example_ids), int(manifest["model_id"])
        examples = {i: require_example(store, i, model_id) for i in ids}
        answers: dict[str, dict[str, Any]] = {}
        for i in ids:
            if (found := store.find_influence_run(model_id, i, cache_key(cfg))) is not None:
                answers[i] = run_to_dict(store.get_influence_run(found.id), cfg.top, cached=True)
        todo = [i for i in ids if i not in answers]
        if todo:
            loaded = loaded or LoadedWorkspace.load(root, device)
            bar = _tqdm(show_progress)
            runs, notes = _compute(loaded, todo, examples, cfg, runner, _chain(progress, bar))
            if bar is not None:
                bar.close()
            for i, run_id in zip(todo, save_runs(store, runs, job_id=job_id, owner=owner), strict=True):
                answers[i] = {**run_to_dict(store.get_influence_run(run_id), cfg.top, cached=False),
                              "warnings": notes[i]}  # fmt: skip
        return [answers[i] for i in ids]
    finally:
        store.close()


def _compute(
    loaded: LoadedWorkspace, todo: list[str], examples: dict[str, Any], cfg: InfluenceConfig,
    runner: ManyRunner, report: Progress | None,
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:  # fmt: skip
    """kNN per example, one batched run, and each example's run (as ``Store.save_influence_run`` takes it)."""
    knn: list[float] = []
    positions: list[list[int]] | None = None if cfg.k is None else []
    notes: dict[str, list[str]] = {}
    for i in todo:
        t0 = time.perf_counter()
        if positions is not None:
            positions.append(loaded.nearest(i, cfg.k)[0])
        knn.append(time.perf_counter() - t0)
        notes[i] = [] if cfg.k is None or not getattr(loaded.index, "last_fallback", 0) else [
            f"the approximate index found fewer than k={cfg.k} neighbours in the cells it probes "
            f"(nprobe={loaded.index.cfg.nprobe}); they were found by exact search"]  # fmt: skip
    batches = [loaded.encode_test(examples[i].to_record()) for i in todo]
    many = runner(loaded, batches, positions, cfg, report)
    runs = []
    for m, i in enumerate(todo):
        one = many.result(m)
        seconds = {"knn": knn[m], **one.seconds, "total": knn[m] + one.seconds["total"]}
        scores = [(loaded.train_ids[p], float(v)) for p, v in zip(one.indices.tolist(), one.values.tolist(),
                                                                  strict=True)]  # fmt: skip
        runs.append({"model_id": loaded.model_id, "example_id": i, "config": stored_config(cfg), "scores": scores,
                     "num_candidates": len(scores), "timings": seconds, "s_test_stats": one.s_test_stats})  # fmt: skip
    return runs, notes
