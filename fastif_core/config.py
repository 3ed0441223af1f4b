"""Typed settings. The same dataclasses feed the CLI, the job queue and the UI, and are saved as JSON
with every result they produced, so any number on screen can be traced to the settings behind it.

Every field has a default and a one-line help (``field(metadata={"help": ...})``); ``validate()``
raises :class:`~fastif_core.errors.ConfigError` naming the field and the allowed values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastif_core.errors import ConfigError

T = TypeVar("T")


def _f(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse's name
    return field(default=default, metadata={"help": help})


def _require(cond: bool, name: str, allowed: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{name}={value!r} is invalid: allowed {allowed}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as a plain JSON-able dict (nested dataclasses included)."""
    return dataclasses.asdict(cfg)


def to_json(cfg: Any) -> str:
    """Canonical JSON (sorted keys, no spaces): equal configs give equal strings."""
    return json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))


def config_hash(cfg: Any) -> str:
    """Stable 16-hex-digit hash of a config (or any JSON-able dict) for unique keys and caching."""
    text = (
        to_json(cfg)
        if dataclasses.is_dataclass(cfg)
        else json.dumps(cfg, sort_keys=True, separators=(",", ":"))
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a config from a dict, rejecting unknown keys with a message that lists the known ones."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}; allowed {sorted(names)}")
    return cls(**data)


def help_of(cls: type, name: str) -> str:
    """The one-line help of a config field, escaped for argparse (used by the CLI)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
    raise KeyError(name)


CPU_INTERACTIVE_DEPTH = 100  # LiSSA depth pre-filled by the dashboard when no worker has a GPU


@dataclass(frozen=True)
class STestConfig:
    """LiSSA estimate of s_test = (H + damping·scale·I)⁻¹ v (see ``hessian.lissa``)."""

    depth: int = _f(1000, "recursion depth J (HVPs per repetition)")
    batch_size: int = _f(1, "training examples per HVP batch B (1 = the FastIF 'fast' setting)")
    repeats: int = _f(1, "independent repetitions T, averaged (split across devices)")
    damping: float = _f(5e-3, "damping d; the recursion solves (H + d·scale·I) s = v")
    scale: float = _f(1e4, "scale s; must exceed the largest Hessian eigenvalue (0 = estimate it)")
    seed: int = _f(0, "repetition t samples its batches with seed + t")
    tolerance: float = _f(
        0.0, "stop a repetition early when the relative change of h falls below this (0 = off)"
    )
    max_norm: float = _f(1e8, "abort with a clear error when ‖h‖ exceeds this (diverging recursion)")

    def validate(self) -> STestConfig:
        _require(self.depth >= 1, "depth", "an integer >= 1", self.depth)
        _require(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        _require(self.repeats >= 1, "repeats", "an integer >= 1", self.repeats)
        _require(0.0 <= self.damping < 1.0, "damping", "0 <= damping < 1", self.damping)
        _require(self.scale >= 0.0, "scale", "a number > 0 (or 0 for automatic)", self.scale)
        _require(self.tolerance >= 0.0, "tolerance", "a number >= 0", self.tolerance)
        _require(self.max_norm > 0.0, "max_norm", "a number > 0", self.max_norm)
        return self

    @classmethod
    def original(cls, **overrides: Any) -> STestConfig:
        """The original code's MNLI setting: B=128, J=1000, T=1."""
        return cls(**{"depth": 1000, "batch_size": 128, "repeats": 1, **overrides})

    @classmethod
    def fast(cls, **overrides: Any) -> STestConfig:
        """FastIF's fast s_test: B=1, J=1000, T=1 (raise T to reduce the variance)."""
        return cls(**{"depth": 1000, "batch_size": 1, "repeats": 1, **overrides})

    @classmethod
    def interactive(cls, on_gpu: bool, **overrides: Any) -> STestConfig:
        """The dashboard's pre-filled s_test: the fast preset on a GPU; on CPU-only workers the fast preset
        at depth ``CPU_INTERACTIVE_DEPTH``, since J=1000 costs minutes per click on a few cores (an HVP at
        B=1 is ~0.1-0.2 s there; see the README's benchmark figures)."""
        return cls.fast(**{"depth": 1000 if on_gpu else CPU_INTERACTIVE_DEPTH, **overrides})


@dataclass(frozen=True)
class KnnConfig:
    """Nearest-neighbour pre-filter over the fine-tuned model's pooled features (L2, as in the paper)."""

    k: int = _f(1000, "number of nearest training examples scored (the candidates)")
    index: str = _f("Flat", "FAISS index factory string: 'Flat' (exact) or e.g. 'IVF1024,Flat', 'HNSW32'")
    nprobe: int = _f(16, "IVF cells visited per query (approximate indexes only)")
    use_gpu: bool = _f(True, "put the index on a GPU when CUDA and faiss-gpu are present")

    def validate(self) -> KnnConfig:
        _require(self.k >= 1, "k", "an integer >= 1", self.k)
        _require(bool(self.index.strip()), "index", "a FAISS factory string such as 'Flat'", self.index)
        _require(self.nprobe >= 1, "nprobe", "an integer >= 1", self.nprobe)
        return self


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning of the sequence classifier (AdamW, decoupled weight decay, dynamic padding)."""

    epochs: float = _f(2.0, "passes over the training set (fractions allowed)")
    batch_size: int = _f(32, "examples per optimisation step")
    lr: float = _f(1e-4, "AdamW learning rate (linear decay, 10% warm-up)")
    weight_decay: float = _f(0.005, "AdamW weight decay; also the L2 term of the influence loss")
    freeze_layers: int = _f(0, "freeze the first L encoder layers (the paper: 9 of 12)")
    freeze_embeddings: bool = _f(True, "freeze the embeddings (the paper's setting; keeps every HVP small)")
    max_length: int = _f(128, "maximum tokens per premise/hypothesis pair")
    seed: int = _f(0, "seed for the head initialisation and the data order")
    labels: int = _f(3, "label scheme: 3 (MNLI) or 2 (HANS entailment / non-entailment)")

    def validate(self) -> TrainConfig:
        _require(self.epochs > 0, "epochs", "a number > 0", self.epochs)
        _require(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        _require(self.lr > 0, "lr", "a number > 0", self.lr)
        _require(self.weight_decay >= 0, "weight_decay", "a number >= 0", self.weight_decay)
        _require(self.freeze_layers >= 0, "freeze_layers", "an integer >= 0", self.freeze_layers)
        _require(self.max_length >= 8, "max_length", "an integer >= 8", self.max_length)
        _require(self.labels in (2, 3), "labels", "2 or 3", self.labels)
        return self


@dataclass(frozen=True)
class InfluenceConfig:
    """One influence query: candidates (kNN or full) and the s_test estimator."""

    s_test: STestConfig = field(default_factory=STestConfig.fast, metadata={"help": "s_test estimator"})
    k: int | None = _f(1000, "score the k nearest training examples; None = full (all training examples)")
    top: int = _f(10, "helpful / harmful examples returned (0 = every candidate)")
    score_batch_size: int = _f(64, "candidates per JVP scoring batch")

    @property
    def full(self) -> bool:
        return self.k is None

    def validate(self) -> InfluenceConfig:
        self.s_test.validate()
        _require(self.k is None or self.k >= 1, "k", "an integer >= 1 or None (full)", self.k)
        _require(self.top >= 0, "top", "an integer >= 0", self.top)
        _require(self.score_batch_size >= 1, "score_batch_size", "an integer >= 1", self.score_batch_size)
        return self

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> InfluenceConfig:
        data = dict(data)
        s_test = from_dict(STestConfig, data.pop("s_test", {}))
        return from_dict(cls, {**data, "s_test": s_test})


@dataclass(frozen=True)
class PrepareConfig:
    """Everything ``fastif prepare`` needs to turn data and a model into a ready workspace."""

    train: str = _f(
        "demo", "training data: 'demo' (built-in corpus), a file path, or 'hf:<dataset>[:<split>]'"
    )
    evals: tuple[str, ...] = _f((), "extra evaluation sources (same forms as train)")
    max_train: int | None = _f(None, "use at most this many training examples (after the hold-out split)")
    max_eval: int | None = _f(
        None, "use at most this many examples of each evaluation source (stratified by slice, seeded)"
    )
    holdout: float = _f(0.1, "fraction of the training source held out for evaluation")
    model: str | None = _f(None, "local transformers checkpoint dir (default: the packaged MiniLM)")
    train_config: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "fine-tuning settings"})
    neighbors: int = _f(10, "nearest training neighbours stored per example (shown in the dashboard)")
    knn: KnnConfig = field(default_factory=KnnConfig, metadata={"help": "FAISS index settings"})
    demo_size: int = _f(3000, "training examples generated for the built-in corpus")

    def validate(self) -> PrepareConfig:
        self.train_config.validate()
        self.knn.validate()
        _require(0.0 <= self.holdout < 1.0, "holdout", "0 <= holdout < 1", self.holdout)
        _require(
            self.max_train is None or self.max_train >= 2, "max_train", "an integer >= 2", self.max_train
        )
        _require(self.max_eval is None or self.max_eval >= 1, "max_eval", "an integer >= 1", self.max_eval)
        _require(self.neighbors >= 1, "neighbors", "an integer >= 1", self.neighbors)
        _require(self.demo_size >= 20, "demo_size", "an integer >= 20", self.demo_size)
        return self

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> PrepareConfig:
        data = dict(data)
        train_cfg = from_dict(TrainConfig, data.pop("train_config", {}))
        knn = from_dict(KnnConfig, data.pop("knn", {}))
        evals = tuple(data.pop("evals", ()))
        return from_dict(cls, {**data, "train_config": train_cfg, "knn": knn, "evals": evals})
