"""Model versions of a workspace: save a changed model as a new version, switch the active one, compare two.

A version is a row of the ``models`` table (``lineage``: parent model, how it was made, the settings)
and a checkpoint directory ``W/models/<id>/`` written once (staged, then renamed; never overwritten).
Saving also builds what serving it needs, as a prepare does for its model: predictions of every
workspace example and neighbours (in the store), pooled features and the FAISS index over the same
training set (``W/builds/model-<id>-<hex>``). Activating a version switches the active model and the
manifest (``model_id``, ``build``, accuracy) in one store transaction; a build that a later prepare
pruned is rebuilt from the checkpoint first. The parent's files are only ever read
(:func:`checkpoint_hash` lets tests prove it).

Torch is imported only by the functions that run a model (saving, rebuilding); listing and
comparing versions read the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from fastif_core.config import PrepareConfig
from fastif_core.errors import WorkspaceError
from fastif_core.progress import Progress, ignore
from fastif_core.store import Store
from fastif_core.store import examples as ex
from fastif_core.store import results as res
from fastif_core.workspace.layout import WorkspacePaths, require_prepared, write_manifest

COMPARE_COLUMNS = ("dataset", "split", "label", "heuristic", "genre")


def checkpoint_hash(directory: str | Path) -> str:
    """SHA-256 over every file of a checkpoint directory (relative names and bytes, sorted)."""
    root, digest = Path(directory), hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _paths(root: str | Path) -> tuple[WorkspacePaths, dict[str, Any]]:
    manifest = require_prepared(root)
    paths = WorkspacePaths.of(root, manifest)
    if paths.legacy:
        raise WorkspaceError(
            f"{paths.manifest}: model versions need the per-model layout; re-run `fastif prepare`"
        )
    return paths, manifest


def list_versions(root: str | Path) -> list[dict[str, Any]]:
    """Every model of the workspace: id, name, active, parent, how it was made, accuracy per evaluation set."""
    with Store.open(root) as store:
        models = store.list_models()
    return [
        {
            "id": m.id,
            "name": m.name,
            "active": m.active,
            "parent_model_id": m.lineage.get("parent_model_id"),
            "method": m.lineage.get("method", ""),
            "created_at": m.created_at.isoformat(),
            "accuracy": {k: v.get("accuracy") for k, v in (m.metrics.get("accuracy") or {}).items()},
            "lineage": m.lineage,
        }
        for m in models
    ]


def workspace_data(store: Store, model_id: int) -> Any:
    """The workspace's examples as prepare had them: the model's training set in position order, the other
    members grouped into evaluation sets ``<dataset>/<split>``."""
    from fastif_core.workspace.prepare import PreparedData

    train_ids = store.train_ids(model_id)
    if not train_ids:
        raise WorkspaceError(f"model {model_id} has no stored training set: re-run `fastif prepare`")
    train = [r.to_record() for r in store.get_examples(train_ids)]
    evals: dict[str, list[Any]] = defaultdict(list)
    for row in store.query_examples(in_training_set=False, limit=None, model_id=model_id):
        evals[f"{row.dataset}/{row.split}"].append(row.to_record())
    return PreparedData(train=train, evals=dict(sorted(evals.items())))


def _build(
    store: Store,
    paths: WorkspacePaths,
    manifest: dict[str, Any],
    model: Any,
    tokenizer: Any,
    info: Any,
    train_from: int,
    device: str,
    report: Progress,
) -> tuple[str, Any]:
    """Predictions, features, index and neighbours of ``model`` over the workspace (as prepare builds them),
    moved to ``builds/model-<id>-<hex>``; predictions, neighbours and the training order stored."""
    from fastif_core.workspace.prepare import index_and_predict

    cfg = PrepareConfig.from_json_dict(manifest.get("prepare_config") or {})
    data = workspace_data(store, train_from)
    name = f"model-{info.id}-{uuid.uuid4().hex[:8]}"
    staging = paths.staging / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        build = index_and_predict(staging, data, cfg, model, tokenizer, info, device, report)
        paths.builds.mkdir(parents=True, exist_ok=True)
        os.replace(staging, paths.builds / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    with store.transaction() as s:
        ex.set_training_order(s, info.id, [e.id for e in data.train])
        res.save_predictions(s, info.id, build.predictions)
        res.save_neighbors(s, info.id, build.neighbors)
    return name, build


def save_version(
    root: str | Path,
    parent_id: int,
    model: Any,
    tokenizer: Any,
    train_config: Any,
    lineage: dict[str, Any],
    key: str,
    *,
    device: str = "cpu",
    progress: Progress | None = None,
) -> Any:
    """Store ``model`` (changed from ``parent_id``) as a new version under the unique ``key``; the same key
    again returns the stored version. Returns its ModelInfo (not active: see :func:`activate`)."""
    from fastif_core.modeling import classifier as M

    report = progress or ignore
    paths, manifest = _paths(root)
    with Store.open(root) as store:
        parent = store.get_model(parent_id)
        if parent is None:
            raise WorkspaceError(f"model {parent_id} does not exist (list versions with `fastif versions`)")
        known = store.find_model(config_hash=key)
        if (
            known is not None
            and (paths.model_dir(known.id) / M.TRAIN_META).exists()
            and known.metrics.get("build")
        ):
            return known
        name = f"{parent.name}-{lineage.get('method', 'version')}-{key[:8]}"
        lin = {**lineage, "parent_model_id": parent_id, "base_model": parent.lineage.get("base_model")}
        info = store.get_or_create_model(
            name, "", train_config, parent.label_names, config_hash=key, lineage=lin
        )
        target = paths.model_dir(info.id)
        if not (target / M.TRAIN_META).exists():
            _write_checkpoint(paths, target, model, tokenizer, train_config, {"model_id": info.id, **lin})
        report(0.2, f"model version {info.id}: predictions, features and index")
        build_name, build = _build(store, paths, manifest, model, tokenizer, info, parent_id, device, report)
        metrics = {
            "build": build_name,
            "accuracy": build.manifest["accuracy"],
            "train_accuracy": build.manifest["train_accuracy"],
        }
        return store.update_model(info.id, metrics=metrics, checkpoint_path=target)


def _write_checkpoint(
    paths: WorkspacePaths,
    target: Path,
    model: Any,
    tokenizer: Any,
    train_config: Any,
    lineage: dict[str, Any],
) -> None:
    """Checkpoint + ``lineage.json`` into staging, then one rename into ``models/<id>`` (refused if full)."""
    from fastif_core.modeling import classifier as M

    staging = paths.staging / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        M.save_checkpoint(model, tokenizer, staging, train_config, {"lineage": lineage})
        (staging / "lineage.json").write_text(json.dumps(lineage, indent=2, sort_keys=True))
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def activate(
    root: str | Path, model_id: int, *, device: str = "cpu", progress: Progress | None = None
) -> dict:
    """Serve ``model_id``: the store's active model and the manifest switch together; returns the manifest.
    The manifest's ``model_builds`` remembers each served model's build and accuracy for switching back."""
    paths, manifest = _paths(root)
    current = int(manifest["model_id"])
    served = {str(k): dict(v) for k, v in (manifest.get("model_builds") or {}).items()}
    served[str(current)] = {"build": manifest.get("build"), "accuracy": manifest.get("accuracy")}
    with Store.open(root) as store:
        info = store.get_model(model_id)
        if info is None:
            raise WorkspaceError(f"model {model_id} does not exist (list versions with `fastif versions`)")
        if model_id == current:
            return manifest
        if store.train_ids(model_id) != store.train_ids(current):
            raise WorkspaceError(
                f"model {model_id} was trained on another training set than the workspace's; "
                "re-run `fastif prepare` for it"
            )
        known = served.get(str(model_id)) or {
            "build": info.metrics.get("build"),
            "accuracy": info.metrics.get("accuracy"),
        }
        if (
            not known.get("build")
            or not (paths.builds / known["build"] / "index.faiss").exists()
            or known.get("accuracy") is None
        ):
            known = _rebuild(store, paths, manifest, info, current, device, progress)
        new = {
            **manifest,
            "model_id": model_id,
            "build": known["build"],
            "accuracy": known["accuracy"],
            "model_builds": {**served, str(model_id): known},
        }
        with store.transaction() as s:
            ex.set_active_model(s, model_id)
            s.flush()
            write_manifest(paths.root, new)
    return new


def _rebuild(
    store: Store,
    paths: WorkspacePaths,
    manifest: dict[str, Any],
    info: Any,
    current: int,
    device: str,
    progress: Progress | None,
) -> dict[str, Any]:
    """Features and index of a version whose build is gone (pruned by a later prepare), from its checkpoint."""
    from fastif_core.modeling import classifier as M

    model, tokenizer, _, _ = M.load_checkpoint(paths.model_dir(info.id), device)
    name, build = _build(store, paths, manifest, model, tokenizer, info, current, device, progress or ignore)
    store.update_model(
        info.id, metrics={**info.metrics, "build": name, "accuracy": build.manifest["accuracy"]}
    )
    return {"build": name, "accuracy": build.manifest["accuracy"]}


def compare(
    root: str | Path, a: int, b: int, *, columns: tuple[str, ...] = COMPARE_COLUMNS, limit: int = 200
) -> dict[str, Any]:
    """Two versions side by side: accuracy per slice value of each column, and the evaluation examples whose
    prediction changed (``limit`` rows; ``changed`` counts all)."""
    with Store.open(root) as store:
        for mid in (a, b):
            if store.get_model(mid) is None:
                raise WorkspaceError(f"model {mid} does not exist (list versions with `fastif versions`)")
        slices = {col: _side_by_side(store, col, a, b) for col in columns}
        pa, pb = store.get_predictions(a), store.get_predictions(b)
        rows = store.query_examples(in_training_set=False, limit=None, model_id=a)
        changed = [r for r in rows if r.id in pa and r.id in pb and pa[r.id].predicted != pb[r.id].predicted]
    examples = [
        {
            "id": r.id,
            "dataset": r.dataset,
            "split": r.split,
            "label": r.label,
            "premise": r.premise,
            "hypothesis": r.hypothesis,
            "a": pa[r.id].predicted,
            "b": pb[r.id].predicted,
            "fixed": pb[r.id].predicted == r.label,
            **r.slices,
        }
        for r in changed[:limit]
    ]
    fixed = sum(pb[r.id].correct and not pa[r.id].correct for r in changed)
    broken = sum(pa[r.id].correct and not pb[r.id].correct for r in changed)
    return {
        "a": a,
        "b": b,
        "slices": slices,
        "changed": len(changed),
        "fixed": fixed,
        "broken": broken,
        "examples": examples,
    }


def _side_by_side(store: Store, column: str, a: int, b: int) -> list[dict[str, Any]]:
    """``[{value, n, accuracy_a, accuracy_b}]`` over the evaluation examples (not the training set)."""
    left = {g.value: g for g in store.summarize_by(column, model_id=a, in_training_set=False)}
    right = {g.value: g for g in store.summarize_by(column, model_id=b, in_training_set=False)}
    return [
        {
            "value": v,
            "n": left[v].count,
            "accuracy_a": left[v].accuracy,
            "accuracy_b": right[v].accuracy if v in right else None,
        }
        for v in sorted(left, key=lambda x: (x is None, str(x)))
        if v is not None
    ]
