"""Read-only queries through the store (cached briefly) and the two writes the dashboard makes:
enqueueing a job and cancelling one. Nothing here runs torch work: the worker does.

The workspace is ``$FASTIF_WORKSPACE`` or ``./workspaces/demo``; no page opens a path typed by a user.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from app import formatting as fmt
from app.controls import FilterOptions
from fastif_core import jobs
from fastif_core.config import InfluenceConfig, PrepareConfig
from fastif_core.queries.influence import cache_key
from fastif_core.store import (
    ExampleFilter,
    ExampleRow,
    ExampleSummary,
    GroupSummary,
    InfluenceRunInfo,
    JobInfo,
    NeighborInfo,
    Store,
    WorkerInfo,
)
from fastif_core.worker.process import running, spawn_worker
from fastif_core.workspace.layout import default_workspace, read_manifest

AUTOSTART_ENV = "FASTIF_AUTOSTART_WORKER"  # "0" = never start a worker from the app (tests, shared hosts)
KEEP_WORKER_ENV = "FASTIF_KEEP_WORKER"  # "1" = a worker the app starts keeps running after the app exits
WORKER_DEVICES_ENV = "FASTIF_WORKER_DEVICES"  # devices of an auto-started worker (default "auto")
TABLE_LIMIT = 2000


@dataclass(frozen=True)
class WorkspaceState:
    """What the app knows about its workspace before any query: where it is, whether it is ready."""

    root: str
    manifest: dict[str, Any] | None

    @property
    def ready(self) -> bool:
        return bool(self.manifest) and self.manifest.get("status") == "ready"

    @property
    def num_train(self) -> int:
        return int((self.manifest or {}).get("num_train", 0))

    @property
    def model_id(self) -> int | None:
        value = (self.manifest or {}).get("model_id")
        return int(value) if value is not None else None

    @property
    def labels(self) -> list[str]:
        return list((self.manifest or {}).get("labels", []))

    @property
    def approximate_neighbours(self) -> str | None:
        """The approximate index the stored neighbour lists come from (None: exact search)."""
        how = (self.manifest or {}).get("neighbors_index") or {}
        return None if how.get("exact", True) else f"{how['index']} probed at {how['nprobe']} cells"


def workspace_root() -> str:
    """The workspace directory as an absolute path (the cache key of every query)."""
    return str(default_workspace().resolve())


@st.cache_data(ttl=2, show_spinner=False)
def workspace_state(root: str) -> WorkspaceState:
    """The workspace's manifest (None while it is not prepared)."""
    return WorkspaceState(root=root, manifest=read_manifest(root) if Path(root).exists() else None)


@st.cache_resource(show_spinner=False)
def store(root: str) -> Store:
    """One store (connection pool) per workspace and process; creates and migrates the database."""
    return Store.open(root)


# ---- browse ---------------------------------------------------------------------------------------
def data_version(root: str) -> tuple[str | None, int | None]:
    """What the Browse counts depend on: the build (which examples) and the active model (which
    predictions). Passed to the cached queries below so that they are computed once per build and model
    (a count over 400,000 examples takes ~1 s) and again as soon as either changes."""
    state = workspace_state(root)
    return (state.manifest or {}).get("build"), state.model_id


@st.cache_data(ttl=600, show_spinner=False)
def filter_options(root: str, version: tuple[str | None, int | None] | None = None) -> FilterOptions:
    """Distinct values for each browse filter."""
    s = store(root)
    values = {
        c: [str(v) for v in s.distinct_values(c)] for c in ("split", "label", "genre", "heuristic", "subcase")
    }
    values["predicted"] = s.predicted_labels()  # from the predictions' index: no join over every example
    datasets = [str(d) for d in s.distinct_values("dataset")]  # of the current sources only
    return FilterOptions(
        datasets=datasets,
        splits=values["split"],
        labels=values["label"],
        predicted=values["predicted"],
        genres=values["genre"],
        heuristics=values["heuristic"],
        subcases=values["subcase"],
    )


@st.cache_data(ttl=600, show_spinner=False)
def browse_summary(
    root: str, filters: ExampleFilter, version: tuple[str | None, int | None] | None = None
) -> ExampleSummary:
    """Counts and accuracy of all the examples matching ``filters``."""
    return store(root).summarize_examples(filters)


@st.cache_data(ttl=10, show_spinner=False)
def browse_page(root: str, filters: ExampleFilter, page: int = 0, limit: int = TABLE_LIMIT) -> pd.DataFrame:
    """Page ``page`` (from 0) of ``limit`` matching examples, in id order, as a table."""
    rows = store(root).query_examples(filters, limit=limit, offset=page * limit)
    return fmt.examples_frame(rows)


@st.cache_data(ttl=600, show_spinner=False)
def accuracy_by(
    root: str, column: str, filters: ExampleFilter, version: tuple[str | None, int | None] | None = None
) -> list[GroupSummary]:
    """Counts and accuracy per value of ``column`` (e.g. per HANS heuristic) under ``filters``."""
    return store(root).summarize_by(column, filters)


# ---- one example ----------------------------------------------------------------------------------
@st.cache_data(ttl=30, show_spinner=False)
def example(root: str, example_id: str) -> ExampleRow | None:
    """The example with the workspace model's prediction, or None if the id is unknown."""
    return store(root).get_example(example_id, workspace_state(root).model_id)


@st.cache_data(ttl=30, show_spinner=False)
def neighbors(root: str, example_id: str) -> list[NeighborInfo]:
    """Stored nearest training neighbours, nearest first (empty before any are stored)."""
    model_id = workspace_state(root).model_id
    return store(root).get_neighbors(model_id, example_id) if model_id is not None else []


@st.cache_data(ttl=5, show_spinner=False)
def influence_run(root: str, run_id: int) -> InfluenceRunInfo | None:
    """A stored influence run with its scores and the training examples' text."""
    return store(root).get_influence_run(run_id)


@st.cache_data(ttl=5, show_spinner=False)
def latest_run_id(root: str, example_id: str, config: InfluenceConfig | None = None) -> int | None:
    """Newest stored run for the example (for ``config``'s settings when given; ``top`` is ignored)."""
    runs = store(root).list_influence_runs(model_id=workspace_state(root).model_id, example_id=example_id)
    if config is not None:
        runs = [r for r in runs if _run_key(r.config) == cache_key(config)]
    return runs[0].id if runs else None


def _run_key(config: dict[str, Any]) -> str:
    """The settings key of a stored run's config (``query.cache_key``: everything but ``top``)."""
    plain = {k: v for k, v in config.items() if k != "cache_key"}
    return config.get("cache_key") or cache_key(InfluenceConfig.from_json_dict(plain))


def run_for_job(root: str, job: JobInfo) -> int | None:
    """The influence run a finished job produced (its result, else the stored run for its settings)."""
    run_id = (job.result or {}).get("influence_run_id") or (job.result or {}).get("run_id")
    if run_id is not None:
        return int(run_id)
    params = jobs.parse_params("influence", job.params)
    return latest_run_id(root, params.example_id, params.config)


def shown_top(job: JobInfo | None) -> int | None:
    """How many helpful / harmful examples to show: the job's ``top`` (None = all), else the default."""
    top = (job.params.get("config", {}) if job is not None else {}).get("top", InfluenceConfig().top)
    return int(top) or None


# ---- jobs -----------------------------------------------------------------------------------------
def job(root: str, job_id: int) -> JobInfo | None:
    """A job row, fresh (polled by the progress fragment, never cached)."""
    return store(root).get_job(job_id)


def list_jobs(
    root: str,
    statuses: list[str] | None = None,
    kind: str | None = None,
    limit: int = 200,
    example_id: str | None = None,
) -> list[JobInfo]:
    """Jobs newest first (fresh), of ``example_id`` when given."""
    return store(root).list_jobs(status=statuses, kind=kind, limit=limit, example_id=example_id)


def active_job(root: str, kind: str, example_id: str | None = None) -> JobInfo | None:
    """The newest queued or running job of ``kind`` (for ``example_id`` when given)."""
    found = list_jobs(root, ["queued", "running"], kind, limit=1, example_id=example_id)
    return found[0] if found else None


def influence_job(root: str, example_id: str, job_id: int | None) -> JobInfo | None:
    """The influence job to show for an example: the one this session queued, else its newest one."""
    if job_id is not None:
        return job(root, job_id)
    found = list_jobs(root, kind="influence", limit=1, example_id=example_id)
    return found[0] if found else None


def latest_job(root: str, kind: str) -> JobInfo | None:
    found = list_jobs(root, kind=kind, limit=1)
    return found[0] if found else None


def enqueue_influence(root: str, example_id: str, config: InfluenceConfig) -> JobInfo:
    """Queue "influence of the training set on this example" (an equal queued/running/done job is reused)."""
    params = jobs.InfluenceParams(
        example_id=example_id, config=config, model_id=workspace_state(root).model_id
    )
    return jobs.enqueue(store(root), "influence", params)


def enqueue_prepare(root: str, config: PrepareConfig) -> JobInfo:
    """Queue preparing the workspace (an equal job is reused)."""
    return jobs.enqueue(store(root), "prepare", config)


def cancel_job(root: str, job_id: int) -> JobInfo:
    """Cancel a queued job at once, or ask a running job's worker to stop."""
    return store(root).cancel_job(job_id)


# ---- the worker -----------------------------------------------------------------------------------
def workers(root: str, alive_within_s: float | None = None) -> list[WorkerInfo]:
    return store(root).list_workers(alive_within_s=alive_within_s)


@dataclass(frozen=True)
class StartedWorker:
    """A worker process this app process started; ``kept``: it outlives the app ($FASTIF_KEEP_WORKER)."""

    proc: subprocess.Popen
    kept: bool


@st.cache_resource(show_spinner=False)
def _started() -> dict[str, StartedWorker]:
    """Worker processes this app process started, by workspace."""
    return {}


def keep_worker() -> bool:
    """Whether a worker the app starts keeps running after the app exits (``$FASTIF_KEEP_WORKER=1``)."""
    return os.environ.get(KEEP_WORKER_ENV, "0").strip().lower() not in ("", "0", "false", "no")


def start_worker(root: str) -> StartedWorker:
    """Start a background worker for the workspace: it stops once this process has exited (it is passed
    our pid), unless $FASTIF_KEEP_WORKER is set."""
    kept = keep_worker()
    devices = os.environ.get(WORKER_DEVICES_ENV, "auto")
    proc = spawn_worker(root, devices, exit_with_pid=None if kept else os.getpid())
    return StartedWorker(proc=proc, kept=kept)


def worker_on_gpu(root: str, within_s: float = 30.0) -> bool:
    """A live worker of the workspace computes on a CUDA device (else, before one has registered, the
    devices the dashboard starts workers with name one)."""
    alive = running(workers(root, alive_within_s=within_s))
    if alive:
        return any(d.startswith("cuda") for w in alive for d in w.devices)
    return "cuda" in os.environ.get(WORKER_DEVICES_ENV, "")


def worker_alive(root: str, within_s: float = 30.0) -> bool:
    """A worker of this workspace sent a heartbeat within ``within_s`` (through the app's cached store)."""
    return bool(running(workers(root, alive_within_s=within_s)))


def ensure_worker(root: str) -> str:
    """Start a background worker when none is alive for the workspace.

    Returns "alive" (one is running), "started" (this call started one), "starting" (started earlier,
    not registered yet) or "off" (none alive and auto-start disabled by $FASTIF_AUTOSTART_WORKER=0).
    """
    store(root)  # the database exists before the worker polls it
    if worker_alive(root):
        return "alive"
    started = _started().get(root)
    if started is not None and started.proc.poll() is None:
        return "starting"
    if os.environ.get(AUTOSTART_ENV, "1") == "0":
        return "off"
    _started()[root] = start_worker(root)
    return "started"


def worker_lifetime(root: str, worker: str) -> str | None:
    """How the workspace's worker ends, given :func:`ensure_worker`'s answer ``worker``: "with_app" (this
    app started it; it stops when the app exits), "kept" (this app started it with $FASTIF_KEEP_WORKER),
    "other" (started elsewhere, e.g. ``fastif worker``: runs until stopped) or None (no worker)."""
    started = _started().get(root)
    if started is not None and started.proc.poll() is None:
        return "kept" if started.kept else "with_app"
    return "other" if worker == "alive" else None


# ---- gradient sketches (issue 27): the example page's whole-training-set click ----------------------
def sketch_indexes(root: str) -> list[dict[str, Any]]:
    """Complete sketch indexes of the active model (their meta.json), newest first (no torch)."""
    import json

    model_id = workspace_state(root).model_id
    if model_id is None:
        return []
    found = []
    for meta in (Path(root) / "sketches" / str(model_id)).glob("*/meta.json"):
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if data.get("status") == "complete":
            found.append((meta.stat().st_mtime, {**data, "dir": str(meta.parent)}))
    return [d for _, d in sorted(found, key=lambda x: -x[0])]


def sketch_build_offer(root: str) -> dict[str, Any]:
    """What building the default sketch index costs, for the example page's offer (no torch): the default
    settings, an unfinished index's blocks and the estimate ``fastif prepare`` timed on its first block,
    and the newest ``sketch`` job of the active model."""
    import json

    from fastif_core.config import SketchConfig

    state, cfg = workspace_state(root), SketchConfig()
    partial = None
    for meta in (Path(root) / "sketches" / str(state.model_id)).glob("*/meta.json"):
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        wanted = {k: v for k, v in cfg.key_fields().items() if k != "dim"}
        if data.get("status") != "complete" and all(
            data["key"]["settings"].get(k) == v for k, v in wanted.items()
        ):
            done = len(list((meta.parent / "blocks").glob("*")))
            total = -(-int(data["num_train"]) // int(data["block"]))
            partial = {
                "blocks_done": done,
                "blocks_total": total,
                "estimate_seconds": data.get("estimate_seconds"),
                "dim": data["dim"],
            }
    build = [
        j
        for j in store(root).list_jobs(kind="sketch", limit=20)
        if j.params.get("model_id") == state.model_id
    ]
    return {"config": cfg, "partial": partial, "job": build[0] if build else None}


def enqueue_sketch_build(root: str) -> JobInfo:
    """Queue the default ``sketch`` job of the active model (an equal queued/running/done job is reused)."""
    from fastif_core.config import SketchConfig
    from fastif_core.jobs import SketchParams

    params = SketchParams(config=SketchConfig(), model_id=workspace_state(root).model_id)
    return jobs.enqueue(store(root), "sketch", params)


def enqueue_sketch_click(
    root: str, example_id: str, config: InfluenceConfig, sketch: Any, rerank: int
) -> JobInfo:
    """Queue the sketch list over all N and the exact re-rank (an equal queued/running/done job is reused)."""
    from fastif_core.jobs import SketchClickParams

    params = SketchClickParams(
        example_id=example_id,
        config=config,
        sketch=sketch,
        rerank=rerank,
        model_id=workspace_state(root).model_id,
    )
    return jobs.enqueue(store(root), "sketch_click", params)


def latest_sketch_run_id(root: str, example_id: str) -> int | None:
    """The newest stored sketch run (all N) of the example (not cached: the click polls it)."""
    runs = store(root).list_influence_runs(model_id=workspace_state(root).model_id, example_id=example_id)
    picked = [r for r in runs if (r.config or {}).get("method") == "sketch"]
    return picked[0].id if picked else None


@st.cache_data(ttl=30, show_spinner=False)
def self_influence(root: str) -> pd.DataFrame | None:
    """Training examples by self-influence (``fastif sketch --self-influence``), largest first, or None."""
    import numpy as np

    files = [
        f for meta in sketch_indexes(root) for f in sorted(Path(meta["dir"]).glob("self_influence-*.npy"))
    ]
    if not files:
        return None
    values = np.load(files[0])
    model_id = workspace_state(root).model_id
    ids = store(root).train_ids(model_id)
    order = np.argsort(-values, kind="stable")[:TABLE_LIMIT]
    frame = fmt.examples_frame(store(root).get_examples([ids[i] for i in order], model_id))
    frame.insert(1, "self_influence", values[order][: len(frame)])
    return frame
