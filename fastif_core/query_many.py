"""Many test examples at once: ``influence_query_many`` answers M examples of a prepared workspace in ONE
batched run (:mod:`fastif_core.influence_many`: one batched s_test, one shared scoring pass) and stores
each answer as an ordinary influence run, so the dashboard's example page and later single queries find
it. Each answer is the JSON object :func:`fastif_core.query.influence_query` gives that example alone
with the same settings and seed (its ``seconds`` are its share of the batch: batch stage time / M, plus
its own kNN search). Examples computed before with the same settings are answered from the store.

Also: :func:`select_examples` (ids from a list, a file or the browse filters) and the ``influence_many``
job kind (:class:`ManyInfluenceParams`), run by the worker on every device of its group.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastif_core import jobs
from fastif_core.config import InfluenceConfig, from_dict
from fastif_core.errors import ConfigError, DataFormatError, JobError
from fastif_core.query import (
    _chain,
    _open,
    _tqdm,
    cache_key,
    check_request,
    list_examples,
    require_example,
    run_to_dict,
    stored_config,
)
from fastif_core.workspace import LoadedWorkspace

Progress = Callable[[float, str], None]
# (loaded workspace, test batches, candidate positions per test or None = all, config, progress) -> ManyInfluence
ManyRunner = Callable[
    [LoadedWorkspace, list, "list[list[int]] | None", InfluenceConfig, "Progress | None"], Any
]


def serial_many_runner(
    loaded: LoadedWorkspace, batches: list, candidates: list[list[int]] | None, cfg: InfluenceConfig,
    progress: Progress | None,
) -> Any:  # fmt: skip
    """One process: M test gradients, one batched s_test, one shared scoring pass."""
    from fastif_core.influence_many import compute_many

    return compute_many(loaded.objective, batches, loaded.train, candidates, cfg, loaded.device, progress)


def unique_ids(ids: Sequence[str]) -> list[str]:
    """The ids, stripped, in order; an empty list or an id given twice is a ConfigError."""
    out = [str(i).strip() for i in ids if str(i).strip()]
    if not out:
        raise ConfigError("examples: no example ids given (list ids with `fastif examples`)")
    twice = next((i for n, i in enumerate(out) if i in out[:n]), None)
    if twice is not None:
        raise ConfigError(f"examples: {twice!r} is listed twice; give each example once")
    return out


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


@dataclass(frozen=True)
class ManyInfluenceParams:
    """Influence of the training examples on many test examples, in one batched run."""

    example_ids: tuple[str, ...] = field(metadata={"help": "ids of the test examples"})
    config: InfluenceConfig = field(
        default_factory=InfluenceConfig, metadata={"help": "candidates and s_test"}
    )
    model_id: int | None = field(
        default=None, metadata={"help": "model id in the store (None = the workspace's)"}
    )

    def validate(self) -> ManyInfluenceParams:
        if isinstance(self.example_ids, str) or not all(isinstance(i, str) for i in self.example_ids):
            raise JobError(f"example_ids={self.example_ids!r} is invalid: allowed a list of example ids")
        try:
            unique_ids(self.example_ids)
        except ConfigError as exc:
            raise JobError(str(exc)) from None
        self.config.validate()
        return self

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> ManyInfluenceParams:
        data = dict(data)
        config = InfluenceConfig.from_json_dict(data.pop("config", {}))
        ids = data.pop("example_ids", ())
        ids = tuple(ids) if isinstance(ids, list | tuple) else ids
        return from_dict(cls, {**data, "example_ids": ids, "config": config})


jobs.register_kind(
    "influence_many", ManyInfluenceParams, "influential training examples of many test examples"
)
