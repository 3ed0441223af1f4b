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


SOLVERS = ("lissa", "cg", "direct")
CURVATURES = ("hessian", "gauss_newton")
GRADIENT_L2 = ("none", "train", "test_and_train")
PAPER_DAMPING, PAPER_SCALE = 5e-3, 1e4  # FastIF's MNLI LiSSA settings: effective damping μ = 50


@dataclass(frozen=True)
class STestConfig:
    """How s_test = (C + μI)⁻¹ v is solved (``fastif_core.engine.solvers``): C is the Hessian (or its Gauss-Newton
    part) of the training loss, μ the effective damping, v the test gradient.

    LiSSA (the paper's recursion) is parameterised by damping d and scale s with μ = d·s; CG solves the same
    damped system on one fixed, seeded batch. ``mu > 0`` fixes μ directly (LiSSA then uses d = μ/s, which
    lets ``scale = 0`` estimate s by power iteration without changing the system being solved).
    """

    solver: str = _f("lissa", f"s_test solver: {' | '.join(SOLVERS)}")
    curvature: str = _f(
        "hessian", f"curvature C: {' | '.join(CURVATURES)} (Gauss-Newton Jᵀ∇²ℓJ is positive semi-definite)"
    )
    depth: int = _f(1000, "LiSSA: recursion depth J (HVPs per repetition); CG: most iterations")
    batch_size: int = _f(1, "training examples per curvature batch B (LiSSA: per step; CG: the fixed batch)")
    repeats: int = _f(1, "independent repetitions T, averaged (split across devices)")
    damping: float = _f(PAPER_DAMPING, "LiSSA damping d; the recursion solves (C + d·scale·I) s = v")
    scale: float = _f(PAPER_SCALE, "LiSSA scale s; must exceed the largest eigenvalue of C (0 = estimate it)")
    mu: float = _f(0.0, "effective damping μ of (C + μI) s = v; 0 = damping × scale (the paper's form)")
    seed: int = _f(0, "repetition t samples its batches with seed + t")
    tolerance: float = _f(
        0.0,
        "stop when converged (0 = off): CG relative residual ‖r‖/‖v‖; LiSSA relative change of h "
        "(or of the window mean when window > 0)",
    )
    window: int = _f(0, "LiSSA: average h over blocks of this many steps and compare block means (0 = off)")
    max_norm: float = _f(1e8, "abort with a clear error when ‖h‖ exceeds this (diverging recursion)")

    def validate(self) -> STestConfig:
        _require(self.solver in SOLVERS, "solver", " | ".join(SOLVERS), self.solver)
        _require(self.curvature in CURVATURES, "curvature", " | ".join(CURVATURES), self.curvature)
        _require(self.depth >= 1, "depth", "an integer >= 1", self.depth)
        _require(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        _require(self.repeats >= 1, "repeats", "an integer >= 1", self.repeats)
        _require(0.0 <= self.damping < 1.0, "damping", "0 <= damping < 1", self.damping)
        _require(self.scale >= 0.0, "scale", "a number > 0 (or 0 for automatic)", self.scale)
        _require(self.mu >= 0.0, "mu", "a number >= 0 (0 = damping × scale)", self.mu)
        _require(self.tolerance >= 0.0, "tolerance", "a number >= 0", self.tolerance)
        _require(self.window >= 0, "window", "an integer >= 0", self.window)
        _require(self.max_norm > 0.0, "max_norm", "a number > 0", self.max_norm)
        _require(
            self.solver == "lissa" or self.mu > 0 or self.scale > 0,
            "scale",
            f"a number > 0 for solver={self.solver} (or set mu)",
            self.scale,
        )
        _require(
            self.solver != "direct" or self.curvature == "gauss_newton",
            "curvature",
            "gauss_newton for solver=direct (the true Hessian has no low-rank factor)",
            self.curvature,
        )
        return self

    @property
    def effective_damping(self) -> float | None:
        """μ of the solved system, or None while ``scale = 0`` is still to be estimated."""
        if self.mu > 0:
            return self.mu
        return self.damping * self.scale if self.scale > 0 else None

    @classmethod
    def original(cls, **overrides: Any) -> STestConfig:
        """The original code's MNLI setting: LiSSA B=128, J=1000, T=1."""
        return cls(**{"depth": 1000, "batch_size": 128, "repeats": 1, **overrides})

    @classmethod
    def fast(cls, **overrides: Any) -> STestConfig:
        """FastIF's fast s_test: LiSSA B=1, J=1000, T=1, d=5e-3, s=1e4 (raise T to reduce the variance)."""
        return cls(**{"depth": 1000, "batch_size": 1, "repeats": 1, **overrides})

    paper = fast

    @classmethod
    def lissa_batched(cls, **overrides: Any) -> STestConfig:
        """LiSSA with B=16 and a power-iteration scale, the paper's μ = 50 kept, stopped by the window test."""
        base = {"batch_size": 16, "scale": 0.0, "mu": PAPER_DAMPING * PAPER_SCALE, "depth": 300}
        return cls(**{**base, "window": 25, "tolerance": 0.02, **overrides})

    @classmethod
    def gauss_newton_cg(cls, **overrides: Any) -> STestConfig:
        """CG on the Gauss-Newton curvature of one seeded batch of 64, μ = 50, to a 1e-3 relative residual
        (B=64: the fastest batch size meeting the agreement floors in ``fastif bench --section solvers``)."""
        base = {"solver": "cg", "curvature": "gauss_newton", "batch_size": 64, "depth": 50}
        return cls(**{**base, "mu": PAPER_DAMPING * PAPER_SCALE, "tolerance": 1e-3, **overrides})

    @classmethod
    def gauss_newton_direct(cls, **overrides: Any) -> STestConfig:
        """The system of :meth:`gauss_newton_cg` (one seeded batch of 64, μ = 50) solved exactly by the
        Woodbury identity (``solver=direct``): no iterations; the factor is kept for the next query."""
        base = {"solver": "direct", "curvature": "gauss_newton", "batch_size": 64, "depth": 1}
        return cls(**{**base, "mu": PAPER_DAMPING * PAPER_SCALE, **overrides})

    @classmethod
    def default(cls, **overrides: Any) -> STestConfig:
        """The engine's default (CLI, worker and dashboard): chosen by ``fastif bench``'s solver section on
        the trained 8,000-example MNLI workspace (see the README)."""
        return cls.gauss_newton_cg(**overrides)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> STestConfig:
        """A named preset: ``default``, ``paper`` (= ``fast``), ``original``, ``lissa_batched``, ``gauss_newton_cg``,
        ``gauss_newton_direct``."""
        makers = {
            "default": cls.default,
            "paper": cls.fast,
            "fast": cls.fast,
            "original": cls.original,
            "lissa_batched": cls.lissa_batched,
            "gauss_newton_cg": cls.gauss_newton_cg,
            "gauss_newton_direct": cls.gauss_newton_direct,
        }
        _require(name in makers, "preset", " | ".join(makers), name)
        return makers[name](**overrides)


PRESETS = ("default", "paper", "original", "lissa_batched", "gauss_newton_cg", "gauss_newton_direct")


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

    s_test: STestConfig = field(default_factory=STestConfig.default, metadata={"help": "s_test solver"})
    k: int | None = _f(1000, "score the k nearest training examples; None = full (all training examples)")
    top: int = _f(10, "helpful / harmful examples returned (0 = every candidate)")
    score_batch_size: int = _f(64, "candidates per JVP scoring batch")
    gradient_l2: str = _f(
        "none",
        "L2 term in the gradients: none (test and candidate gradients of the data loss; the regulariser "
        "only in the curvature) | train (candidate gradients only) | test_and_train (FastIF's code)",
    )

    @property
    def full(self) -> bool:
        return self.k is None

    def validate(self) -> InfluenceConfig:
        self.s_test.validate()
        _require(self.k is None or self.k >= 1, "k", "an integer >= 1 or None (full)", self.k)
        _require(self.top >= 0, "top", "an integer >= 0", self.top)
        _require(self.score_batch_size >= 1, "score_batch_size", "an integer >= 1", self.score_batch_size)
        _require(self.gradient_l2 in GRADIENT_L2, "gradient_l2", " | ".join(GRADIENT_L2), self.gradient_l2)
        return self

    @property
    def test_l2(self) -> bool:
        """Whether the test gradient carries the L2 term's gradient ``2·wd·θ``."""
        return self.gradient_l2 == "test_and_train"

    @property
    def train_l2(self) -> bool:
        """Whether the candidate gradients carry the L2 term's gradient ``2·wd·θ``."""
        return self.gradient_l2 in ("train", "test_and_train")

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> InfluenceConfig:
        data = dict(data)
        given = data.pop("s_test", None)  # absent: the engine's default; a partial dict fills field defaults
        s_test = STestConfig.default() if given is None else from_dict(STestConfig, given)
        return from_dict(cls, {**data, "s_test": s_test})


@dataclass(frozen=True)
class PrepareConfig:
    """Everything ``fastif prepare`` needs to turn data and a model into a ready workspace.

    ``fit_subset = N`` fine-tunes on the first N training examples of the seeded shuffle only (FAISS
    positions 0 to N-1, a uniform sample), while every training example is still imported, featurised,
    indexed and a candidate, and influence's objective, curvature batches and N stay those of the whole
    training set: the CPU stand-in for a model fine-tuned on all of it (on a GPU).
    """

    train: str = _f(
        "demo", "training data: 'demo' (built-in corpus), a file path, or 'hf:<dataset>[:<split>]'"
    )
    evals: tuple[str, ...] = _f((), "extra evaluation sources (same forms as train)")
    max_train: int | None = _f(None, "use at most this many training examples (after the hold-out split)")
    fit_subset: int | None = _f(
        None,
        "fine-tune on only the first N training examples of the seeded shuffle; all of them stay imported, "
        "indexed and influence candidates (None = fine-tune on all)",
    )
    max_eval: int | None = _f(
        None, "use at most this many examples of each evaluation source (stratified by slice, seeded)"
    )
    holdout: float = _f(0.1, "fraction of the training source held out for evaluation")
    model: str | None = _f(None, "local transformers checkpoint dir (default: the packaged MiniLM)")
    train_config: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "fine-tuning settings"})
    neighbors: int = _f(10, "nearest training neighbours stored per example (shown in the dashboard)")
    neighbors_index: str = _f(
        "auto",
        "index the stored neighbour lists are searched with: auto (the workspace's index below 100,000 "
        "training examples, from there an IVF of about 4·sqrt(N) cells probed at 32) | exact (the "
        "workspace's index) | a FAISS factory string probed at 32 cells",
    )
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
        _require(
            self.fit_subset is None or self.fit_subset >= 1, "fit_subset", "an integer >= 1", self.fit_subset
        )
        _require(self.neighbors >= 1, "neighbors", "an integer >= 1", self.neighbors)
        _require(
            bool(self.neighbors_index.strip()),
            "neighbors_index",
            "auto | exact | a FAISS factory string",
            self.neighbors_index,
        )
        _require(self.demo_size >= 20, "demo_size", "an integer >= 20", self.demo_size)
        return self

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> PrepareConfig:
        data = dict(data)
        train_cfg = from_dict(TrainConfig, data.pop("train_config", {}))
        knn = from_dict(KnnConfig, data.pop("knn", {}))
        evals = tuple(data.pop("evals", ()))
        return from_dict(cls, {**data, "train_config": train_cfg, "knn": knn, "evals": evals})


# ---- gradient sketches (issue 27): `fastif sketch`, `--method sketch` -------------------------------
PROJECTIONS = ("gaussian", "orthogonal")
SMALL = ("project", "exact")
ROWS = ("exact", "mc")
DTYPES = ("float32", "float16")
SKETCH_CURVATURES = ("gauss_newton", "identity")
CURVATURE_EXAMPLES = ("all", "seeded")
METHODS = ("exact", "sketch")
DEFAULT_DIM = 38752  # MiniLM (38 Linear, 12 LayerNorm layers) at k = 32 with orthogonal factors: the
# smallest d of the README's sketch table that meets Pearson >= 0.95 and top-10 >= 0.7 against exact influence


@dataclass(frozen=True)
class SketchConfig:
    """One sketch index of a model's training set: N × d, one row per training example."""

    dim: int = _f(
        DEFAULT_DIM, "target sketch dimension d; the factor width k per layer is the one closest to it"
    )
    projection: str = _f("orthogonal", f"Kronecker factors: {' | '.join(PROJECTIONS)} (seeded)")
    small: str = _f(
        "project", f"biases and LayerNorm parameters: {' | '.join(SMALL)} (exact: kept as they are)"
    )
    seed: int = _f(0, "seed of the projection factors")
    rows: str = _f(
        "exact",
        "Gauss-Newton rows: exact (Q^{1/2} of every example, C backward passes) | mc (one label drawn from "
        "the model per example: 2 passes instead of C)",
    )
    dtype: str = _f("float32", f"stored sketches: {' | '.join(DTYPES)} (the curvature rows stay float32)")
    batch_size: int = _f(32, "training examples per backward pass")
    block: int = _f(256, "training examples per stored (resumable) block")

    def validate(self) -> SketchConfig:
        _require(self.dim >= 1, "dim", "an integer >= 1", self.dim)
        _require(self.projection in PROJECTIONS, "projection", " | ".join(PROJECTIONS), self.projection)
        _require(self.small in SMALL, "small", " | ".join(SMALL), self.small)
        _require(self.rows in ROWS, "rows", " | ".join(ROWS), self.rows)
        _require(self.dtype in DTYPES, "dtype", " | ".join(DTYPES), self.dtype)
        _require(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        _require(self.block >= 1, "block", "an integer >= 1", self.block)
        return self

    def key_fields(self) -> dict[str, Any]:
        """The settings that determine the stored values (batching and block size do not)."""
        data = dataclasses.asdict(self)
        for name in ("batch_size", "block"):
            data.pop(name)
        return data


@dataclass(frozen=True)
class SketchQueryConfig:
    """How a query uses a sketch index: which curvature, over which examples, plain or relative."""

    sketch: SketchConfig = field(default_factory=SketchConfig, metadata={"help": "the sketch index"})
    curvature: str = _f(
        "gauss_newton",
        "sketch-space curvature: gauss_newton (the exact path's system restricted to the sketch, μ of the "
        "s_test settings) | identity (a plain gradient dot product, TracIn-like)",
    )
    examples: str = _f(
        "all",
        "Gauss-Newton over: all (every training example) | seeded (the exact path's seeded batch of "
        "s_test.batch_size, to see the projection's error apart from the curvature's)",
    )
    relative: bool = _f(False, "RelatIF: divide each score by √(self-influence) of the training example")
    precondition: bool = _f(
        True,
        "keep H⁻¹φ of every training example next to the index (computed once per curvature and μ): a "
        "query is then one product, and no process factors the curvature again (same values either way)",
    )

    def key_fields(self) -> dict[str, Any]:
        """The settings that determine the values (``precondition`` only changes how they are computed)."""
        data = to_dict(self)
        data.pop("precondition")
        return data

    def validate(self) -> SketchQueryConfig:
        self.sketch.validate()
        _require(
            self.curvature in SKETCH_CURVATURES, "curvature", " | ".join(SKETCH_CURVATURES), self.curvature
        )
        _require(
            self.examples in CURVATURE_EXAMPLES, "examples", " | ".join(CURVATURE_EXAMPLES), self.examples
        )
        return self

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> SketchQueryConfig:
        data = dict(data)
        sketch = from_dict(SketchConfig, data.pop("sketch", {}))
        return from_dict(cls, {**data, "sketch": sketch})


def sketch_query_field() -> Any:
    """The ``sketch`` field of an application's settings (used with ``method="sketch"``)."""
    return field(
        default_factory=SketchQueryConfig, metadata={"help": "the sketch query (with method=sketch)"}
    )
