"""A workspace: one directory with everything prepared for one (data, model) pair. This module holds its
layout (paths, the manifest, features on disk) and :class:`LoadedWorkspace` (model, objective, training
set and kNN index, loaded once per process). Building one is :func:`fastif_core.workspace.prepare.prepare`;
asking it questions is :mod:`fastif_core.queries`.

Layout of a workspace directory ``W``::

    W/fastif.db                         SQLite store (examples, predictions, neighbours, jobs, results)
    W/models/<model_id>/                one fine-tuned checkpoint per model id (safetensors,
                                        fastif_train.json, lineage.json), written once, never overwritten
    W/builds/<build>/index.faiss        FAISS index over the training examples' pooled features
    W/builds/<build>/features.safetensors  pooled features of every example (ids in the metadata)
    W/staging/<pid>-<hex>/              a prepare in progress (swept by the next prepare once that pid is gone)
    W/workspace.json                    manifest: the PrepareConfig that built it, its hash (settings and
                                        data), model id, build, sizes, accuracy

A prepare builds into ``staging/``, moves the finished build to ``builds/`` and then switches the store
(examples, the model's training order, predictions, neighbours, the active model) and the manifest in one
transaction, so every reader sees either the old or the new state. Workspaces written before this layout
(``W/model``, ``W/index.faiss``, ``W/features.safetensors``; no ``layout`` in the manifest) are still read.

Everything here is I/O; the math lives in :mod:`fastif_core.engine`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastif_core.config import KnnConfig, PrepareConfig, config_hash, from_dict, to_dict
from fastif_core.errors import FastifError, WorkspaceError

MANIFEST = "workspace.json"
LAYOUT = 2  # manifests without "layout" describe the first layout (W/model, W/index.faiss at the root)


def default_workspace() -> Path:
    """``$FASTIF_WORKSPACE`` if set, else ``./workspaces/demo``."""
    return Path(os.environ.get("FASTIF_WORKSPACE", "workspaces/demo")).expanduser()


@dataclass(frozen=True)
class WorkspacePaths:
    """Where each artefact of a workspace lives: ``build`` names the manifest's build; ``layout`` 1 is the
    first layout (one ``W/model``, the index and features at the root)."""

    root: Path
    build: str | None = None
    layout: int = LAYOUT

    @classmethod
    def of(cls, root: str | Path, manifest: dict[str, Any]) -> WorkspacePaths:
        """The paths the manifest ``manifest`` of the workspace ``root`` refers to."""
        layout = manifest.get("layout", 1)
        return cls(Path(root), str(manifest.get("build") or ""), layout if isinstance(layout, int) else 1)

    @property
    def legacy(self) -> bool:
        return self.layout < 2

    @property
    def db(self) -> Path:
        return self.root / "fastif.db"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def model_dir(self, model_id: int) -> Path:
        """The checkpoint of ``model_id`` (the first layout had one ``W/model`` for every model)."""
        return self.root / "model" if self.legacy else self.models / str(int(model_id))

    @property
    def builds(self) -> Path:
        return self.root / "builds"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def build_dir(self) -> Path:
        if self.legacy:
            return self.root
        if not self.build:
            raise WorkspaceError(f"{self.manifest} names no build: re-run `fastif prepare`")
        return self.builds / self.build

    @property
    def index(self) -> Path:
        return self.build_dir / "index.faiss"

    @property
    def features(self) -> Path:
        return self.build_dir / "features.safetensors"

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST


def _prepare_hint(root: Path) -> str:
    return f"`fastif prepare --workspace {root} --train demo` (or --train <your MNLI/HANS file>)"


def read_manifest(root: str | Path) -> dict[str, Any] | None:
    """The manifest of a prepared workspace, or None when it is not (yet) prepared; WorkspaceError naming
    the file when it is not a JSON object (e.g. truncated)."""
    path = WorkspacePaths(Path(root)).manifest
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        why = (
            f"line {exc.lineno} column {exc.colno}: {exc.msg}"
            if isinstance(exc, json.JSONDecodeError)
            else exc
        )
        raise WorkspaceError(
            f"{path}: corrupt manifest ({why}); re-create it with {_prepare_hint(Path(root))}"
        ) from None
    if not isinstance(data, dict):
        raise WorkspaceError(
            f"{path}: corrupt manifest (not a JSON object); re-create it with {_prepare_hint(Path(root))}"
        )
    return data


REQUIRED_KEYS = {"model_id": int, "num_train": int, "labels": list}


def require_prepared(root: str | Path) -> dict[str, Any]:
    """The manifest, or a WorkspaceError telling the user which command prepares the workspace."""
    root = Path(root)
    if not root.exists():
        raise WorkspaceError(f"workspace {root} does not exist: create it with {_prepare_hint(root)}")
    manifest = read_manifest(root)
    if manifest is None or manifest.get("status") != "ready":
        raise WorkspaceError(f"workspace {root} is not prepared: run {_prepare_hint(root)}")
    for key, kind in REQUIRED_KEYS.items():
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise WorkspaceError(
                f"{WorkspacePaths(root).manifest}: corrupt manifest (field {key!r} is "
                f"{manifest.get(key)!r}); re-create it with {_prepare_hint(root)}"
            )
    return manifest


def require_workspace(root: str | Path) -> Path:
    """``root`` if it holds a workspace (a manifest or a database, even if not prepared yet), else a
    WorkspaceError with the command that prepares it (so a typo never creates an empty database)."""
    from fastif_core.store.engine import ENV_URL

    root = Path(root)
    paths = WorkspacePaths(root)
    has_db = paths.db.exists() or (bool(os.environ.get(ENV_URL)) and root.is_dir())
    if not root.is_dir() or not (has_db or paths.manifest.exists()):
        raise WorkspaceError(
            f"workspace {root} does not exist: create it with {_prepare_hint(root)}, "
            f"or queue that with `fastif submit prepare --workspace {root} --train demo`"
        )
    return root


def write_manifest(root: Path, data: dict[str, Any]) -> None:
    """Write the manifest atomically (write a temporary file, then rename)."""
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(root / MANIFEST)


PIPELINE_VERSION = 3  # bump when prepare's outputs change for the same config, so old workspaces rebuild


def prepare_hash(cfg: PrepareConfig, data_hash: str = "") -> str:
    """Hash of everything that determines the prepared artefacts: the settings and the imported data."""
    config = to_dict(cfg)
    if config.get("fit_subset") is None:  # unset, it hashes as before the field existed: old workspaces stay
        config.pop("fit_subset", None)
    if config.get("neighbors_index") == "auto":  # the default hashes as before the field existed, too
        config.pop("neighbors_index", None)
    return config_hash({"config": config, "data": data_hash, "pipeline": PIPELINE_VERSION})


def now() -> float:
    return time.perf_counter()


def save_features(path: Path, feats: Any, ids: list[str]) -> None:
    """Pooled features of every example, ids in the safetensors metadata."""
    from safetensors.torch import save_file

    save_file({"features": feats.contiguous()}, str(path), metadata={"ids": json.dumps(ids)})


def load_features(path: Path) -> tuple[Any, list[str]]:
    """``(features (N, d), ids)`` as saved by :func:`save_features`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("features"), json.loads(f.metadata()["ids"])


def two_way_aware_cross_entropy(logits: Any, labels: Any) -> Any:
    """Per-example cross-entropy ``(B,)``; label index ``C`` (one past the last class) means "any class
    but 0", i.e. HANS's *non-entailment* on a 3-way MNLI model: loss ``-log(p_neutral + p_contradiction)``."""
    import torch

    logp = torch.log_softmax(logits, dim=-1)  # (B, C)
    c = logits.shape[-1]
    merged = torch.logsumexp(logp[:, 1:], dim=-1)  # (B,) log Σ_{j>0} p_j
    picked = logp.gather(1, labels.clamp(max=c - 1).unsqueeze(1)).squeeze(1)  # (B,)
    return -torch.where(labels == c, merged, picked)


@dataclass
class LoadedWorkspace:
    """A prepared workspace loaded once per process (worker rank, CLI call): model, objective, training
    examples (FAISS position order), index and features. Reused across influence queries.
    With ``search=False`` (device-group followers, which never search) index and features are None."""

    root: Path
    manifest: dict[str, Any]
    model_id: int
    label_names: tuple[str, ...]
    model: Any
    tokenizer: Any
    objective: Any
    train: Any  # EncodedExamples, row p = FAISS position p
    train_ids: list[str]
    index: Any  # KnnIndex, None when loaded with search=False
    features: Any  # (N_all, d), None when loaded with search=False
    feature_rows: dict[str, int]
    max_length: int
    device: str

    @classmethod
    def load(cls, root: str | Path, device: str = "cpu", *, search: bool = True) -> LoadedWorkspace:
        """Everything the manifest names, checked against each other (a mismatch is a WorkspaceError);
        ``search=False`` (torchrun followers, which never search) loads neither the index nor the features."""
        from fastif_core.engine.objective import Objective, hf_forward
        from fastif_core.modeling import classifier as M
        from fastif_core.modeling.knn import KnnIndex
        from fastif_core.store import Store

        root = Path(root)
        manifest = require_prepared(root)
        paths, model_id = WorkspacePaths.of(root, manifest), int(manifest["model_id"])
        model, tokenizer, tcfg = _checkpoint(paths.model_dir(model_id), device)
        store = Store.open(root)
        try:
            train_ids = store.train_ids(None if paths.legacy else model_id)
            train_rows = [r.to_record() for r in store.get_examples(train_ids)]
        finally:
            store.close()
        feats, ids = _features(paths.features) if search else (None, list(train_ids))
        _check_consistent(root, manifest, train_ids, len(train_rows), ids)
        labels = tuple(manifest["labels"])
        objective = Objective(
            model, forward=hf_forward, loss=two_way_aware_cross_entropy, weight_decay=tcfg.weight_decay
        )
        return cls(
            root=root,
            manifest=manifest,
            model_id=model_id,
            label_names=labels,
            model=model,
            tokenizer=tokenizer,
            objective=objective,
            train=M.encode(tokenizer, train_rows, labels, tcfg.max_length),
            train_ids=train_ids,
            index=KnnIndex.load(paths.index, knn_config(manifest)) if search else None,
            features=feats,
            feature_rows={i: r for r, i in enumerate(ids)} if search else {},
            max_length=tcfg.max_length,
            device=device,
        )

    def encode_test(self, example: Any) -> dict[str, Any]:
        """A one-row batch for ``example``; a 2-way label on a 3-way model gets the merged-class index."""
        from dataclasses import replace

        from fastif_core.data.records import to_two_way
        from fastif_core.modeling import classifier as M

        known = example.label in self.label_names
        rec = example if known else replace(example, label=self.label_names[0])
        batch = M.encode(self.tokenizer, [rec], self.label_names, self.max_length).collate([0])
        if not known:
            if to_two_way(example.label) != "non-entailment" or len(self.label_names) != 3:
                raise WorkspaceError(
                    f"example {example.id}: label {example.label!r} is not one of {list(self.label_names)}"
                )
            batch["labels"][:] = len(self.label_names)
        return batch

    def nearest(self, example_id: str, k: int) -> tuple[list[int], list[float]]:
        """FAISS positions and squared-L2 distances of the ``k`` nearest training examples."""
        from fastif_core.errors import ConfigError

        n = len(self.train_ids)
        if k > n:
            raise ConfigError(f"k={k} is larger than the training set ({n} examples): use k <= {n} or --full")
        row = self.feature_rows.get(example_id)
        if row is None:
            raise WorkspaceError(f"example {example_id} has no stored features: re-run `fastif prepare`")
        dist, pos = self.index.search(self.features[row : row + 1], k)
        return pos[0].tolist(), dist[0].tolist()


def knn_config(manifest: dict[str, Any]) -> KnnConfig:
    """The index settings prepare used (nprobe, GPU use), so a loaded index searches as it was built to."""
    knn = (manifest.get("prepare_config") or {}).get("knn")
    try:
        return from_dict(KnnConfig, dict(knn)) if knn else KnnConfig()
    except (FastifError, TypeError, ValueError) as exc:
        raise WorkspaceError(
            f"workspace.json: prepare_config.knn is invalid ({exc}); re-run `fastif prepare`"
        ) from None


def _checkpoint(directory: Path, device: str) -> tuple[Any, Any, Any]:
    """The served model, tokenizer and TrainConfig; a damaged checkpoint is a WorkspaceError."""
    from fastif_core.modeling import classifier as M

    try:
        model, tokenizer, tcfg, _ = M.load_checkpoint(directory, device)
    except FastifError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers / safetensors raise many types for a bad file
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise WorkspaceError(
            f"{directory}: the checkpoint cannot be loaded ({type(exc).__name__}: {first}); "
            "re-run `fastif prepare`"
        ) from None
    return model, tokenizer, tcfg


def _features(path: Path) -> tuple[Any, list[str]]:
    if not path.is_file():
        raise WorkspaceError(f"{path} does not exist: re-run `fastif prepare`")
    try:
        return load_features(path)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
        raise WorkspaceError(
            f"{path} is not a readable features file ({type(exc).__name__}): re-run `fastif prepare`"
        ) from None


def _check_consistent(
    root: Path, manifest: dict[str, Any], train_ids: list[str], found: int, feature_ids: list[str]
) -> None:
    """The model's training order, its rows in the store and the features all agree with the manifest."""
    n = int(manifest["num_train"])
    if len(train_ids) != n or found != n or feature_ids[:n] != train_ids:
        raise WorkspaceError(
            f"workspace {root} is inconsistent (model {manifest['model_id']}: {len(train_ids)} training ids in "
            f"the store, {found} examples, manifest says {n}; an interrupted prepare?): re-run `fastif prepare`"
        )
