"""The simulator: a second classifier fine-tuned on the training inputs with the **task model's
predictions** as labels (same base checkpoint and training settings unless told otherwise).

It is a model version of kind ``simulator`` in the store (``models.lineage``: kind, parent model, base
model, settings, a hash of its labels) with its checkpoint in ``W/models/<id>/``, trained once per task
model and settings and reused afterwards; it is never the workspace's active model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from fastif_core.config import TrainConfig, config_hash, from_dict, to_dict
from fastif_core.engine.examples import EncodedExamples
from fastif_core.engine.objective import Objective, hf_forward
from fastif_core.errors import WorkspaceError
from fastif_core.progress import Progress
from fastif_core.store import ModelInfo, Store
from fastif_core.workspace.layout import LoadedWorkspace, WorkspacePaths, two_way_aware_cross_entropy

KIND = "simulator"


@dataclass
class Simulator:
    """A loaded simulator: its store record, the model and the objective the measurement steps on."""

    info: ModelInfo
    model: Any
    objective: Objective
    reused: bool
    train_seconds: float


def predicted_labels(store: Store, model_id: int, train_ids: list[str], num_labels: int) -> torch.Tensor:
    """The task model's predicted class ``(N,)`` of every training input, in training order (the argmax of
    its stored probabilities, in the model's label order)."""
    preds = store.get_predictions(model_id, train_ids)
    missing = [i for i in train_ids if i not in preds or len(preds[i].probs) != num_labels]
    if missing:
        raise WorkspaceError(
            f"model {model_id} has no stored prediction for training example {missing[0]!r} "
            "(and maybe others): re-run `fastif prepare`"
        )
    return torch.tensor([max(range(num_labels), key=preds[i].probs.__getitem__) for i in train_ids])


def training_set(train: EncodedExamples, labels: torch.Tensor) -> EncodedExamples:
    """The task model's training inputs (same tokens, same order) with ``labels`` ``(N,)`` as targets."""
    return EncodedExamples(train.input_ids, labels.clone(), train.pad_id, train.token_type_ids)


def simulator_train_config(task: ModelInfo, epochs: float = 0.0) -> TrainConfig:
    """The task model's training settings (``epochs`` > 0 replaces its number of epochs)."""
    tc = from_dict(TrainConfig, dict(task.train_config))
    return (replace(tc, epochs=epochs) if epochs > 0 else tc).validate()


def base_model(manifest: dict[str, Any]) -> str:
    """The checkpoint the task model was fine-tuned from (a directory; the packaged MiniLM by default)."""
    from fastif_core.modeling.classifier import default_model_path

    return (manifest.get("prepare_config") or {}).get("model") or default_model_path()


def lineage(
    task: ModelInfo, manifest: dict[str, Any], tc: TrainConfig, labels: torch.Tensor
) -> dict[str, Any]:
    """How the simulator is made; its hash (``model_key``) identifies it among the models."""
    out = {
        "kind": KIND,
        "method": "fine-tune on the task model's predictions",
        "parent_model_id": task.id,
        "parent_model_key": task.config_hash,
        "base_model": (manifest.get("prepare_config") or {}).get("model") or "packaged-minilm",
        "train_config": to_dict(tc),
        "num_train": int(labels.numel()),
        "labels_hash": hashlib.sha256(json.dumps(labels.tolist()).encode()).hexdigest()[:16],
    }
    return {**out, "model_key": config_hash(out)}


def ensure_simulator(
    loaded: LoadedWorkspace,
    store: Store,
    *,
    epochs: float = 0.0,
    progress: Progress | None = None,
    show_progress: bool = False,
) -> Simulator:
    """The simulator of the workspace's model: loaded from ``W/models/<id>`` when it was trained before,
    else fine-tuned now (on ``loaded.device``), stored and returned."""
    from fastif_core.modeling import classifier as M

    task = store.get_model(loaded.model_id)
    if task is None:
        raise WorkspaceError(f"model {loaded.model_id} is not in the store: re-run `fastif prepare`")
    tc = simulator_train_config(task, epochs)
    labels = predicted_labels(store, task.id, loaded.train_ids, len(loaded.label_names))
    lin = lineage(task, loaded.manifest, tc, labels)
    paths = WorkspacePaths.of(loaded.root, loaded.manifest)
    known = store.find_model(config_hash=lin["model_key"])
    if known is not None and (paths.model_dir(known.id) / M.TRAIN_META).exists():
        model, _, _, _ = M.load_checkpoint(paths.model_dir(known.id), loaded.device)
        return Simulator(known, model, simulator_objective(model), True, 0.0)
    started = time.perf_counter()
    model, tokenizer = M.load_classifier(base_model(loaded.manifest), tc.labels, loaded.device, seed=tc.seed)
    M.freeze_layers(model, tc.freeze_layers, embeddings=tc.freeze_embeddings)
    train = training_set(loaded.train, labels)
    metrics = M.train_classifier(
        model, train, tc, loaded.device, progress=show_progress, on_progress=progress
    )
    probs = M.predict_proba(model, train, batch_size=64, device=loaded.device)
    metrics["agreement_with_task_model"] = float((probs.argmax(-1) == labels).float().mean())
    info = _save(store, paths, model, tokenizer, tc, metrics, lin, loaded.label_names)
    return Simulator(info, model.eval(), simulator_objective(model), False, time.perf_counter() - started)


def _save(
    store: Store,
    paths: WorkspacePaths,
    model: Any,
    tokenizer: Any,
    tc: TrainConfig,
    metrics: dict[str, Any],
    lin: dict[str, Any],
    label_names: tuple[str, ...],
) -> ModelInfo:
    """Register the simulator and move its checkpoint (with ``lineage.json``) into ``W/models/<id>``."""
    from fastif_core.modeling import classifier as M

    info = store.get_or_create_model(
        f"simulator-of-{lin['parent_model_id']}-{lin['model_key'][:8]}",
        "",
        tc,
        list(label_names),
        metrics=metrics,
        config_hash=lin["model_key"],
        lineage=lin,
    )
    staging = paths.staging / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    target = paths.model_dir(info.id)
    try:
        M.save_checkpoint(model, tokenizer, staging / "model", tc, metrics)
        (staging / "model" / "lineage.json").write_text(
            json.dumps({"model_id": info.id, **lin}, indent=2, sort_keys=True)
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        if not (target / M.TRAIN_META).exists():  # another process may have finished the same simulator
            os.rename(staging / "model", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return store.update_model(info.id, metrics=metrics, checkpoint_path=Path(target))


def simulator_objective(model: Any) -> Objective:
    """The loss the simulator steps on and is measured with: the workspace's (two-way aware) cross-entropy,
    no L2 term (one plain SGD step)."""
    return Objective(model, forward=hf_forward, loss=two_way_aware_cross_entropy, weight_decay=0.0)
