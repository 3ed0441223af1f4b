"""``fastif prepare``: data and a model in, a ready workspace out.

Steps: load the sources (a re-run with the same settings *and* the same data, by content hash, reuses
everything) → fine-tune (or reuse the checkpoint of the model trained with the same key: base model,
settings, the examples fitted) into ``W/models/<model_id>`` → predictions and pooled features of every
example, the FAISS index over the training set and each example's nearest training neighbours, built into
``W/staging/`` → publish: the build moves to ``W/builds/``, then the examples, the model's training order,
predictions, neighbours, the active model and the manifest switch in one store transaction. An
interrupted prepare leaves the previous state untouched and the next one starts over.

Every phase is measured (:class:`fastif_core.measure.PhaseClock`: wall seconds and peak RSS) into the
manifest's ``phases``, with the artefacts' sizes in ``disk_mb``; neither enters the settings hash, so an
equal prepare still reuses the workspace (and keeps the measurements of the prepare that built it).

``fit_subset = N`` fine-tunes on the first N training examples only; every later step, and influence
(objective, curvature batches, candidates), still covers the whole training set (see ``PrepareConfig``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fastif_core.config import PrepareConfig, config_hash, to_dict
from fastif_core.data.loaders import load_source
from fastif_core.data.records import HANS_LABELS, NLIExample, labels_for, to_two_way
from fastif_core.data.sampling import content_hash, stratified_sample
from fastif_core.errors import ConfigError, DataFormatError, WorkspaceError
from fastif_core.measure import PhaseClock, size_mb
from fastif_core.processes import pid_running
from fastif_core.progress import Progress, ignore, sub_range
from fastif_core.store import Store
from fastif_core.store.records import PredictionIn
from fastif_core.workspace.layout import (
    LAYOUT,
    WorkspacePaths,
    prepare_hash,
    read_manifest,
    save_features,
    write_manifest,
)


@dataclass
class PreparedData:
    """The examples of a workspace: the training set (in FAISS position order) and evaluation sets."""

    train: list[NLIExample]
    evals: dict[str, list[NLIExample]] = field(default_factory=dict)  # name → examples
    skipped: dict[str, int] = field(default_factory=dict)  # source → rows without a consensus label
    sources: dict[str, str] = field(default_factory=dict)  # dataset name → the source it came from

    def all_examples(self) -> list[NLIExample]:
        return self.train + [ex for exs in self.evals.values() for ex in exs]


def split_train_source(examples: list[NLIExample], cfg: PrepareConfig) -> tuple[list, list]:
    """Shuffle with the seed, hold out ``cfg.holdout`` of the source, cap training at ``cfg.max_train``."""
    rows = list(examples)
    random.Random(cfg.train_config.seed).shuffle(rows)
    n_hold = int(round(cfg.holdout * len(rows)))
    held, train = rows[:n_hold], rows[n_hold:]
    if cfg.max_train is not None:
        train = train[: cfg.max_train]
    if len(train) < 2:
        raise WorkspaceError(
            f"training source {cfg.train!r} leaves {len(train)} training examples; need >= 2"
        )
    if cfg.fit_subset is not None and cfg.fit_subset > len(train):
        raise ConfigError(
            f"fit_subset={cfg.fit_subset} is invalid: allowed 1 to {len(train)} (the training examples "
            f"of {cfg.train!r} after the hold-out and max_train)"
        )
    return train, held


def fit_examples(train: list[NLIExample], cfg: PrepareConfig) -> list[NLIExample]:
    """The examples the model is fine-tuned on: the first ``cfg.fit_subset`` of the (already seeded,
    shuffled) training set, i.e. FAISS positions 0 to N-1; all of them without ``fit_subset``."""
    return train if cfg.fit_subset is None else train[: cfg.fit_subset]


def collect_data(cfg: PrepareConfig) -> PreparedData:
    """Load the training source (and its hold-out) and every evaluation source as records."""
    skipped: dict[str, int] = {}
    if cfg.train == "demo":
        from fastif_core.data.demo import demo_corpus

        corpus = demo_corpus(
            seed=cfg.train_config.seed,
            train_size=cfg.demo_size,
            dev_size=max(20, cfg.demo_size // 5),
            per_subcase=max(2, cfg.demo_size // 130),
            augment_size=max(10, cfg.demo_size // 10),
        )
        source = corpus.pop("train")
        evals = {
            _eval_name(exs): stratified_sample(exs, cfg.max_eval, cfg.train_config.seed)
            for exs in corpus.values()
            if exs
        }
    else:
        loaded = _load_nonempty(cfg.train, "training")
        skipped[cfg.train] = loaded.skipped_no_consensus
        source, evals = loaded.examples, {}
    train, held = split_train_source(source, cfg)
    train = [_with_split(ex, "train") for ex in train]
    if held:
        evals[_eval_name(held, "heldout")] = [_with_split(ex, "heldout") for ex in held]
    sources = {ex.dataset: cfg.train for exs in [train, *evals.values()] for ex in exs[:1]}
    for src in cfg.evals:
        loaded = _load_nonempty(src, "evaluation")
        skipped[src] = loaded.skipped_no_consensus
        picked = stratified_sample(loaded.examples, cfg.max_eval, cfg.train_config.seed)
        evals.setdefault(_eval_name(picked), []).extend(picked)
        sources.setdefault(picked[0].dataset, src)
    data = PreparedData(train=train, evals=evals, skipped=skipped, sources=sources)
    _check_unique_ids(data, cfg)
    return to_label_scheme(data, cfg.train_config.labels)


def _load_nonempty(source: str, role: str) -> Any:
    """``load_source(source)``, refusing a source without a single labelled example."""
    loaded = load_source(source)
    if not loaded.examples:
        raise DataFormatError(
            f"{source}: no {role} examples: all {loaded.skipped_no_consensus} row(s) have gold label '-' "
            "(no annotator consensus; such rows are skipped)"
        )
    return loaded


def _check_unique_ids(data: PreparedData, cfg: PrepareConfig) -> None:
    """An example id may appear once across all sources (the same file twice would mix up positions)."""
    seen: set[str] = set()
    for ex in data.all_examples():
        if ex.id in seen:
            where = [s for s in (cfg.train, *cfg.evals) if s == data.sources.get(ex.dataset)] or [ex.dataset]
            raise DataFormatError(
                f"{where[0]}: example id {ex.id!r} appears twice across --train and --eval sources "
                "(is one file given twice?); ids must be unique in a workspace"
            )
        seen.add(ex.id)


def to_label_scheme(data: PreparedData, num_labels: int) -> PreparedData:
    """For a 2-way model every example is relabelled entailment / non-entailment (3-way stays as is)."""
    if num_labels == 3:
        return data
    two = lambda exs: [replace(ex, label=to_two_way(ex.label)) for ex in exs]  # noqa: E731
    return replace(data, train=two(data.train), evals={k: two(v) for k, v in data.evals.items()})


def _with_split(ex: NLIExample, split: str) -> NLIExample:
    return ex if ex.split == split else replace(ex, split=split)


def _eval_name(examples: list[NLIExample], split: str | None = None) -> str:
    ex = examples[0]
    return f"{ex.dataset}/{split or ex.split}"


def accuracy_report(
    examples: list[NLIExample], predicted: dict[str, str], slice_keys: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Accuracy of ``predicted`` (id → label, already in each example's label scheme) overall and per slice."""
    total = [ex for ex in examples if ex.id in predicted]
    correct = sum(predicted[ex.id] == ex.label for ex in total)
    report: dict[str, Any] = {"n": len(total), "accuracy": correct / max(len(total), 1), "slices": {}}
    for key in slice_keys:
        groups: dict[str, list[bool]] = defaultdict(list)
        for ex in total:
            value = ex.label if key == "label" else ex.slices.get(key)
            if value is not None:
                groups[value].append(predicted[ex.id] == ex.label)
        if groups:
            report["slices"][key] = {
                v: {"n": len(hits), "accuracy": sum(hits) / len(hits)} for v, hits in sorted(groups.items())
            }
    return report


def predicted_label(probs: list[float], model_labels: tuple[str, ...], two_way: bool) -> str:
    """The predicted label in the example's dataset's scheme (3-way model on 2-way data: n/c → non-entailment)."""
    best = model_labels[max(range(len(probs)), key=probs.__getitem__)]
    return to_two_way(best) if two_way and len(model_labels) == 3 else best


def two_way_datasets(examples: list[NLIExample]) -> set[str]:
    """Datasets labelled entailment / non-entailment only (HANS-style), judged by all their labels."""
    seen: dict[str, set[str]] = defaultdict(set)
    for ex in examples:
        seen[ex.dataset].add(ex.label)
    return {name for name, labels in seen.items() if labels <= set(HANS_LABELS)}


def model_key(cfg: PrepareConfig, train: list[NLIExample]) -> str:
    """Hash of what determines the fine-tuned weights: base model, training config, training data (ids,
    texts and labels, in order)."""
    return config_hash(
        {
            "model": cfg.model or "packaged-minilm",
            "train": to_dict(cfg.train_config),
            "ids": [e.id for e in train],
            "data": content_hash(train),
        }
    )


SLICES = ("label", "genre", "heuristic", "subcase")


def prepare(
    root: str | Path,
    cfg: PrepareConfig,
    *,
    device: str = "cpu",
    progress: Progress | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Build (or reuse) the workspace at ``root`` for ``cfg``; returns the manifest (also in workspace.json)."""
    from fastif_core.modeling.knn import check_factory

    cfg.validate()
    check_factory(cfg.knn.index)
    paths = WorkspacePaths(Path(root))
    report = progress or ignore
    report(0.0, "loading data")
    clock = PhaseClock()
    with clock.phase("load"):
        data = collect_data(cfg)  # before anything is written: a bad file changes nothing
        phash = prepare_hash(cfg, content_hash(data.all_examples()))
    paths.root.mkdir(parents=True, exist_ok=True)
    with prepare_lock(paths, report):  # one prepare per workspace at a time; a second one waits, then reuses
        return _prepare_locked(paths, cfg, data, phash, device, report, show_progress, clock)


@contextlib.contextmanager
def prepare_lock(paths: WorkspacePaths, report: Progress) -> Iterator[None]:
    """An exclusive ``flock`` on ``W/prepare.lock`` for the duration of one prepare (released by the OS
    when the process dies, so a killed prepare never leaves the workspace locked). Where ``fcntl`` does
    not exist (Windows) prepares are not serialised."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with (paths.root / "prepare.lock").open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report(0.0, "waiting for another prepare of this workspace to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _prepare_locked(
    paths: WorkspacePaths,
    cfg: PrepareConfig,
    data: PreparedData,
    phash: str,
    device: str,
    report: Progress,
    show_progress: bool,
    clock: PhaseClock,
) -> dict[str, Any]:
    old = _previous_manifest(paths.root)
    if (
        old
        and old.get("status") == "ready"
        and old.get("prepare_hash") == phash
        and WorkspacePaths.of(paths.root, old).index.exists()
    ):
        return {**old, "reused": True}
    started = time.perf_counter()
    sweep_staging(paths)
    staging = paths.staging / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    store = Store.open(paths.root)
    try:
        report(0.05, f"loaded {len(data.all_examples())} examples")
        model, tokenizer, model_info, train_seconds = fit_model(
            store, paths, staging, data, cfg, device, report, show_progress, clock
        )
        build = index_and_predict(
            staging / "build", data, cfg, model, tokenizer, model_info, device, report, clock, show_progress
        )
        manifest = {
            **build.manifest,
            "status": "ready",
            "layout": LAYOUT,
            "build": f"{phash}-{staging.name}",
            "prepare_hash": phash,
            "prepare_config": to_dict(cfg),
            "reused": False,
            "train_seconds": train_seconds,
            "fit_subset": cfg.fit_subset,
            "num_fit": len(fit_examples(data.train, cfg)),
            "seconds": time.perf_counter() - started,
            "skipped_no_consensus": data.skipped,
        }
        with clock.phase("import"):
            publish(store, paths, staging / "build", data, model_info.id, build, manifest)
            store.analyze()  # the planner's statistics of the new rows
            store.checkpoint()  # the WAL folded in: disk_mb's database is the file's own size
        manifest = {**manifest, "phases": clock.as_dict(), "disk_mb": disk_sizes(paths.root, manifest)}
        manifest["seconds"] = time.perf_counter() - started
        write_manifest(paths.root, manifest)  # the published manifest with the import phase and the sizes
    finally:
        store.close()
        shutil.rmtree(staging, ignore_errors=True)
    prune_builds(paths, keep={manifest["build"], (old or {}).get("build")})
    report(1.0, "workspace ready")
    return manifest


def disk_sizes(root: str | Path, manifest: dict[str, Any]) -> dict[str, float | None]:
    """MiB on disk of the workspace's artefacts: the database (SQLite file with its WAL; None for a server
    database), the FAISS index, the features, the served model's checkpoint and its sketch indexes."""
    from fastif_core.store.engine import resolve_url

    paths = WorkspacePaths.of(root, manifest)
    db = None
    if resolve_url(paths.root) == resolve_url(paths.root, f"sqlite:///{paths.db.resolve()}"):
        files = [size_mb(Path(f"{paths.db}{suffix}")) for suffix in ("", "-wal", "-shm")]
        db = sum(f for f in files if f is not None)
    model = manifest.get("model_id")
    return {
        "database": db,
        "index": size_mb(paths.index),
        "features": size_mb(paths.features),
        "model": None if model is None else size_mb(paths.model_dir(int(model))),
        "sketches": None if model is None else size_mb(paths.root / "sketches" / str(int(model))),
    }


def record_phase(root: str | Path, build: str, name: str, phase: dict[str, Any]) -> dict[str, Any] | None:
    """Add a phase measured after the prepare (the sketch build of ``fastif prepare --sketches``) and the
    sizes now to the manifest, under the prepare lock and only while it still names ``build``; returns
    the manifest written (None when another prepare has replaced it)."""
    paths = WorkspacePaths(Path(root))
    with prepare_lock(paths, ignore):
        manifest = _previous_manifest(paths.root)
        if not manifest or manifest.get("build") != build:
            return None
        manifest["phases"] = {**(manifest.get("phases") or {}), name: phase}
        manifest["disk_mb"] = disk_sizes(paths.root, manifest)
        write_manifest(paths.root, manifest)
        return manifest


def _previous_manifest(root: Path) -> dict[str, Any] | None:
    """The current manifest; a corrupt one counts as none (this prepare replaces it)."""
    try:
        return read_manifest(root)
    except WorkspaceError:
        return None


def sweep_staging(paths: WorkspacePaths) -> None:
    """Remove what prepares that no longer run left in ``staging/`` (killed, out of memory, ...)."""
    if not paths.staging.is_dir():
        return
    for entry in paths.staging.iterdir():
        pid = entry.name.split("-", 1)[0]
        if not (pid.isdigit() and int(pid) != 0 and pid_running(int(pid))):
            shutil.rmtree(entry, ignore_errors=True)


def prune_builds(paths: WorkspacePaths, keep: set[str | None]) -> None:
    """Delete builds other than the current and the previous one (a reader may still be loading that)."""
    if paths.builds.is_dir():
        for entry in paths.builds.iterdir():
            if entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)


def publish(
    store: Store,
    paths: WorkspacePaths,
    build_dir: Path,
    data: PreparedData,
    model_id: int,
    build: Build,
    manifest: dict[str, Any],
) -> None:
    """Move the finished build to ``builds/`` and switch the store and the manifest in one transaction."""
    paths.builds.mkdir(parents=True, exist_ok=True)
    os.replace(build_dir, paths.builds / manifest["build"])
    two_way = two_way_datasets(data.all_examples())
    datasets = {}
    for name in sorted({ex.dataset for ex in data.all_examples()}):
        scheme, names = ("hans", HANS_LABELS) if name in two_way else ("mnli", labels_for(3))
        datasets[name] = {"label_scheme": scheme, "labels": list(names), "source": data.sources.get(name)}
    store.publish(
        datasets=datasets,
        examples=data.all_examples(),
        model_id=model_id,
        train_ids=[ex.id for ex in data.train],
        predictions=build.predictions,
        neighbors=build.neighbors,
        before_commit=lambda: write_manifest(paths.root, manifest),
    )


def lineage(cfg: PrepareConfig, train: list[NLIExample], key: str) -> dict[str, Any]:
    """How a fine-tuned model was made (stored with the model and in its directory's ``lineage.json``)."""
    return {
        "method": "fine-tune",
        "parent_model_id": None,
        "base_model": cfg.model or "packaged-minilm",
        "train_config": to_dict(cfg.train_config),
        "num_train": len(train),
        "train_data_hash": content_hash(train),
        "model_key": key,
        "train_source": cfg.train,
        "fit_subset": cfg.fit_subset,
    }


def fit_model(
    store: Store,
    paths: WorkspacePaths,
    staging: Path,
    data: PreparedData,
    cfg: PrepareConfig,
    device: str,
    report: Progress,
    show_progress: bool,
    clock: PhaseClock | None = None,
) -> tuple[Any, Any, Any, float]:
    """Fine-tune the classifier on the training set (its first ``fit_subset`` examples, when set) into
    ``models/<id>``, or reuse the checkpoint of the model trained with the same key (base model, settings,
    the examples fitted)."""
    from fastif_core.modeling import classifier as M

    phase = (clock or PhaseClock()).phase
    fit = fit_examples(data.train, cfg)
    key, tc = model_key(cfg, fit), cfg.train_config
    known = store.find_model(config_hash=key)
    if known is not None and (paths.model_dir(known.id) / M.TRAIN_META).exists():
        with phase("load_model"):
            model, tokenizer, _, _ = M.load_checkpoint(paths.model_dir(known.id), device)
        return model, tokenizer, known, 0.0
    with phase("load_model"):
        model, tokenizer = M.load_classifier(
            cfg.model or M.default_model_path(), tc.labels, device, seed=tc.seed
        )
        M.freeze_layers(model, tc.freeze_layers, embeddings=tc.freeze_embeddings)
    with phase("encode_fit"):
        train = M.encode(tokenizer, fit, labels_for(tc.labels), tc.max_length)
    started = time.perf_counter()
    with phase("fine_tune"):
        metrics = M.train_classifier(
            model,
            train,
            tc,
            device,
            progress=show_progress,
            on_progress=lambda f, m: report(0.05 + 0.75 * f, f"fine-tuning: {m}"),
        )
    seconds = time.perf_counter() - started
    info = known or store.get_or_create_model(
        f"{Path(cfg.model or 'minilm').name}-ft-{key[:8]}",
        "",
        tc,
        labels_for(tc.labels),
        metrics=metrics,
        config_hash=key,
        lineage=lineage(cfg, fit, key),
    )
    target = paths.model_dir(info.id)
    M.save_checkpoint(model, tokenizer, staging / "model", tc, metrics)
    (staging / "model" / "lineage.json").write_text(
        json.dumps({"model_id": info.id, **lineage(cfg, fit, key)}, indent=2, sort_keys=True)
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(staging / "model", target)  # never over an existing checkpoint: rename refuses a full directory
    info = store.update_model(info.id, metrics=metrics, checkpoint_path=target)
    return model.eval(), tokenizer, info, seconds


@dataclass
class Build:
    """What :func:`index_and_predict` made: the manifest's numbers and the rows :func:`publish` stores."""

    manifest: dict[str, Any]
    predictions: list[PredictionIn]
    neighbors: dict[str, list[tuple[str, float]]]


def index_and_predict(
    out: Path,
    data: PreparedData,
    cfg: PrepareConfig,
    model: Any,
    tokenizer: Any,
    info: Any,
    device: str,
    report: Progress,
    clock: PhaseClock | None = None,
    show_progress: bool = False,
) -> Build:
    """Predictions and pooled features for every example, the FAISS index (files in ``out``), neighbours,
    accuracy; nothing is stored yet. Each step is a phase of ``clock``."""
    from fastif_core.modeling import classifier as M
    from fastif_core.modeling.knn import KnnIndex, neighbour_index_config

    phase = (clock or PhaseClock()).phase
    examples, labels = data.all_examples(), tuple(info.label_names)
    two_way = two_way_datasets(examples)
    report(0.8, f"predicting {len(examples)} examples")
    with phase("encode"):
        encoded = M.encode(
            tokenizer, [_in_scheme(ex, labels) for ex in examples], labels, cfg.train_config.max_length
        )
    with phase("featurise"):  # predictions and pooled features in one forward pass
        probs, feats = M.infer(
            model,
            encoded,
            batch_size=64,
            device=device,
            features=True,
            progress=show_progress,
            on_progress=lambda f, m: report(0.8 + 0.12 * f, m),
        )
    del encoded
    with phase("predictions"):
        rows = probs.tolist()  # once: N x C Python floats
        predicted = {
            ex.id: predicted_label(p, labels, ex.dataset in two_way)
            for ex, p in zip(examples, rows, strict=True)
        }
        predictions = [
            PredictionIn(ex.id, p, predicted[ex.id], predicted[ex.id] == ex.label)
            for ex, p in zip(examples, rows, strict=True)
        ]
    report(0.92, "building the kNN index")
    n_train = len(data.train)
    out.mkdir(parents=True, exist_ok=True)
    with phase("faiss_build"):
        index = KnnIndex.build(feats[:n_train], cfg.knn)
        index.save(out / "index.faiss")
    with phase("save_features"):
        save_features(out / "features.safetensors", feats, [ex.id for ex in examples])
    with phase("eval"):
        manifest = {
            "model_id": info.id,
            "num_train": n_train,
            "num_examples": len(examples),
            "labels": list(labels),
            "feature_dim": int(feats.shape[1]),
            "accuracy": {name: accuracy_report(exs, predicted, SLICES) for name, exs in data.evals.items()},
            "train_accuracy": accuracy_report(data.train, predicted)["accuracy"],
        }
    report(0.95, "listing each example's nearest training neighbours")
    with phase("neighbours"):
        near_cfg = neighbour_index_config(cfg.neighbors_index, n_train, cfg.knn)
        near = index if near_cfg is None else KnnIndex.build(feats[:n_train], near_cfg)
        ids = [ex.id for ex in examples]
        neighbors = neighbors_of(near, feats, ids, n_train, cfg.neighbors, sub_range(report, 0.95, 0.97))
    used = near_cfg or cfg.knn
    manifest["neighbors_index"] = {"index": used.index, "nprobe": used.nprobe, "exact": used.index == "Flat"}
    return Build(manifest, predictions, neighbors)


def _in_scheme(ex: NLIExample, labels: tuple[str, ...]) -> NLIExample:
    """2-way examples encoded for a 3-way model get a placeholder label (their loss is handled separately)."""
    return ex if ex.label in labels else replace(ex, label=labels[-1])


NEIGHBOUR_QUERIES = 16384  # examples searched per FAISS call of the neighbours phase (one progress step)


def neighbors_of(
    index: Any,
    feats: Any,
    ids: Sequence[str],
    n_train: int,
    k: int,
    progress: Progress | None = None,
) -> dict[str, list[tuple[str, float]]]:
    """Each example's ``k`` nearest training examples by id (``ids[i]`` is row ``i`` of ``feats``, the
    first ``n_train`` the training rows; a training example is not its own neighbour), ``NEIGHBOUR_QUERIES``
    examples per search."""
    k_eff = min(k + 1, n_train)
    out: dict[str, list[tuple[str, float]]] = {}
    for lo in range(0, len(ids), NEIGHBOUR_QUERIES):
        dist, pos = index.search(feats[lo : lo + NEIGHBOUR_QUERIES], k_eff)
        for row, (d_row, p_row) in enumerate(zip(dist.tolist(), pos.tolist(), strict=True), start=lo):
            pairs = [
                (ids[p], float(d))
                for d, p in zip(d_row, p_row, strict=True)
                if p >= 0 and not (row < n_train and p == row)
            ]
            out[ids[row]] = pairs[:k]
        if progress is not None:
            done = min(lo + NEIGHBOUR_QUERIES, len(ids))
            progress(done / len(ids), f"neighbours: {done:,}/{len(ids):,} examples")
    return out
