"""Workspaces: one directory with everything prepared for one (data, model) pair, and the two pipelines
that the CLI, the worker and the benchmarks share: :func:`prepare` and :func:`influence_query`.

Layout of a workspace directory ``W``::

    W/fastif.db              SQLite store (examples, predictions, neighbours, jobs, influence results)
    W/model/                 fine-tuned checkpoint (safetensors + fastif_train.json)
    W/index.faiss            FAISS index over the training examples' pooled features
    W/features.safetensors   pooled features of every example (rows in store order, see ``feature_ids``)
    W/workspace.json         manifest: the PrepareConfig that built it, its hash, model id, sizes, accuracy

Everything here is I/O and orchestration; the math lives in ``hessian`` / ``influence``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastif_core.config import PrepareConfig, config_hash, to_dict
from fastif_core.errors import WorkspaceError

Progress = Callable[[float, str], None]

MANIFEST = "workspace.json"


def default_workspace() -> Path:
    """``$FASTIF_WORKSPACE`` if set, else ``./workspaces/demo``."""
    return Path(os.environ.get("FASTIF_WORKSPACE", "workspaces/demo")).expanduser()


@dataclass(frozen=True)
class WorkspacePaths:
    """Where each artefact of a workspace lives."""

    root: Path

    @property
    def db(self) -> Path:
        return self.root / "fastif.db"

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def index(self) -> Path:
        return self.root / "index.faiss"

    @property
    def features(self) -> Path:
        return self.root / "features.safetensors"

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST


def read_manifest(root: str | Path) -> dict[str, Any] | None:
    """The manifest of a prepared workspace, or None when it is not (yet) prepared."""
    path = WorkspacePaths(Path(root)).manifest
    if not path.exists():
        return None
    return json.loads(path.read_text())


def require_prepared(root: str | Path) -> dict[str, Any]:
    """The manifest, or a WorkspaceError telling the user which command prepares the workspace."""
    root = Path(root)
    if not root.exists():
        raise WorkspaceError(
            f"workspace {root} does not exist: create it with `fastif prepare --workspace {root} --train demo`"
        )
    manifest = read_manifest(root)
    if manifest is None or manifest.get("status") != "ready":
        raise WorkspaceError(
            f"workspace {root} is not prepared: run `fastif prepare --workspace {root} --train demo` "
            "(or --train <your MNLI/HANS file>)"
        )
    return manifest


def write_manifest(root: Path, data: dict[str, Any]) -> None:
    """Write the manifest atomically (write a temporary file, then rename)."""
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(root / MANIFEST)


PIPELINE_VERSION = 2  # bump when prepare's outputs change for the same config, so old workspaces rebuild


def prepare_hash(cfg: PrepareConfig) -> str:
    """Hash of everything that determines the prepared artefacts."""
    return config_hash({"config": to_dict(cfg), "pipeline": PIPELINE_VERSION})


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
        from fastif_core import model as M
        from fastif_core.knn import KnnIndex
        from fastif_core.objective import Objective, hf_forward
        from fastif_core.store import Store

        root = Path(root)
        manifest, paths = require_prepared(root), WorkspacePaths(root)
        model, tokenizer, tcfg, _ = M.load_checkpoint(paths.model_dir, device)
        store = Store.open(root)
        try:
            train_ids = store.train_ids()
            train_rows = [r.to_record() for r in store.get_examples(train_ids)]
        finally:
            store.close()
        labels = tuple(manifest["labels"])
        feats, ids = load_features(paths.features) if search else (None, [])
        objective = Objective(model, forward=hf_forward, loss=two_way_aware_cross_entropy,
                              weight_decay=tcfg.weight_decay)  # fmt: skip
        return cls(
            root=root, manifest=manifest, model_id=int(manifest["model_id"]), label_names=labels, model=model,
            tokenizer=tokenizer, objective=objective, train=M.encode(tokenizer, train_rows, labels, tcfg.max_length),
            train_ids=train_ids, index=KnnIndex.load(paths.index, None) if search else None, features=feats,
            feature_rows={i: r for r, i in enumerate(ids)}, max_length=tcfg.max_length, device=device,
        )  # fmt: skip

    def encode_test(self, example: Any) -> dict[str, Any]:
        """A one-row batch for ``example``; a 2-way label on a 3-way model gets the merged-class index."""
        from dataclasses import replace

        from fastif_core import model as M
        from fastif_core.data.records import to_two_way

        known = example.label in self.label_names
        rec = example if known else replace(example, label=self.label_names[0])
        batch = M.encode(self.tokenizer, [rec], self.label_names, self.max_length).collate([0])
        if not known:
            if to_two_way(example.label) != "non-entailment" or len(self.label_names) != 3:
                raise WorkspaceError(f"example {example.id}: label {example.label!r} is not one of "
                                     f"{list(self.label_names)}")  # fmt: skip
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
