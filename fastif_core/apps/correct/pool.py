"""Candidate pools of a correction run: the training set, or a new dataset for data augmentation.

A new pool (``demo:augment``, a HANS-format or MNLI file, ``hf:...``) gets its own pooled features and
FAISS index under the model that serves the workspace, built once and stored in
``W/pools/<model_id>-<hash of the pool's data>/`` (``examples.jsonl``, ``features.safetensors``,
``index.faiss``, ``pool.json``; staged, then renamed). Its examples are labelled in the model's scheme
(:func:`~fastif_core.apps.correct.data.encode_labeled`), so a pool example's influence and gradient
step are computed exactly as a training example's.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from fastif_core.apps.correct.config import TRAIN_POOL
from fastif_core.apps.correct.data import encode_labeled
from fastif_core.data.records import NLIExample
from fastif_core.errors import DataFormatError, WorkspaceError
from fastif_core.modeling.knn import KnnIndex
from fastif_core.workspace.layout import LoadedWorkspace, knn_config, load_features, save_features

POOL_META = "pool.json"
POOL_SAMPLE_SEED = 0  # the pool sample is the same for every seed of a comparison, so its runs merge


@dataclass
class Pool:
    """Candidates: ``examples[i]`` is encoded as ``encoded`` row i and indexed at position i."""

    source: str
    ids: list[str]
    encoded: Any  # EncodedExamples
    index: Any  # KnnIndex over the pool's features
    examples: list[NLIExample] | None  # None for the training set (its records are in the store)
    directory: str | None = None  # where a new pool is stored
    built: bool = False  # built by this call (False: read from disk or the training set)

    def __len__(self) -> int:
        return len(self.ids)


def training_pool(loaded: LoadedWorkspace) -> Pool:
    """The training set as the candidate pool (the workspace's own index and encoded examples)."""
    return Pool(TRAIN_POOL, list(loaded.train_ids), loaded.train, loaded.index, None)


def load_pool(loaded: LoadedWorkspace, source: str, *, size: int | None = None, batch_size: int = 64) -> Pool:
    """The pool ``source`` under ``loaded``'s model: the training set, a stored pool, or one built now;
    ``size``: at most that many of the source's examples, a stratified sample drawn with seed 0."""
    if source.strip() == TRAIN_POOL:
        return training_pool(loaded)
    from fastif_core.data.loaders import load_source
    from fastif_core.data.sampling import content_hash, stratified_sample

    records = stratified_sample(load_source(source).examples, size, seed=POOL_SAMPLE_SEED)
    if not records:
        raise DataFormatError(f"pool={source!r}: no labelled examples to use as candidates")
    directory = Path(loaded.root) / "pools" / f"{loaded.model_id}-{content_hash(records)}"
    if not (directory / POOL_META).is_file():
        _build(loaded, source, records, directory, batch_size)
        built = True
    else:
        built = False
    return _read(loaded, source, directory, built)


def _build(
    loaded: LoadedWorkspace, source: str, records: list[NLIExample], directory: Path, batch_size: int
) -> None:
    """Features under the served model and a FAISS index over them, written once into ``directory``."""
    from fastif_core.modeling import classifier as M

    encoded = encode_labeled(loaded.tokenizer, records, loaded.label_names, loaded.max_length)
    feats = M.pooled_features(loaded.model, encoded, batch_size, loaded.device)  # (N, d)
    index = KnnIndex.build(feats, knn_config(loaded.manifest))
    staging = Path(loaded.root) / "staging" / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        with (staging / "examples.jsonl").open("w") as fh:
            fh.writelines(json.dumps(asdict(ex), sort_keys=True) + "\n" for ex in records)
        save_features(staging / "features.safetensors", feats, [ex.id for ex in records])
        index.save(staging / "index.faiss")
        meta = {"source": source, "model_id": loaded.model_id, "num_examples": len(records)}
        (staging / POOL_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        directory.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staging, directory)
        except OSError:
            if not (directory / POOL_META).is_file():  # another run stored the same pool meanwhile: keep that
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _read(loaded: LoadedWorkspace, source: str, directory: Path, built: bool) -> Pool:
    try:
        with (directory / "examples.jsonl").open() as fh:
            records = [NLIExample(**json.loads(line)) for line in fh if line.strip()]
        _, ids = load_features(directory / "features.safetensors")
        index = KnnIndex.load(directory / "index.faiss", knn_config(loaded.manifest))
    except Exception as exc:  # noqa: BLE001 - json, safetensors and faiss raise their own types
        raise WorkspaceError(
            f"{directory}: the stored pool is damaged ({type(exc).__name__}); delete the "
            "directory and run again to rebuild it"
        ) from None
    if ids != [ex.id for ex in records] or index.ntotal != len(records):
        raise WorkspaceError(f"{directory}: features, index and examples disagree; delete it to rebuild")
    encoded = encode_labeled(loaded.tokenizer, records, loaded.label_names, loaded.max_length)
    return Pool(source, ids, encoded, index, records, str(directory), built)


def anchor_query(loaded: LoadedWorkspace, anchor_ids: list[str]) -> Tensor:
    """The kNN query: the mean of the anchors' stored features under the served model ``(1, d)``."""
    rows = [loaded.feature_rows.get(i) for i in anchor_ids]
    if any(r is None for r in rows):
        raise WorkspaceError("an anchor has no stored features: re-run `fastif prepare`")
    return loaded.features[rows].mean(dim=0, keepdim=True)
