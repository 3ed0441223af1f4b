"""Settings of gradient sketches (torch-free: the CLI parser and the dashboard import it).

:class:`SketchConfig` says how the per-example gradients of a model's training set are sketched and
stored (``fastif sketch``, job kind ``sketch``); :class:`SketchQueryConfig` how a query uses them
(``fastif influence --method sketch``). Both are saved with every result they produced.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fastif_core import jobs
from fastif_core.config import _f, _require, from_dict

PROJECTIONS = ("gaussian", "orthogonal")
SMALL = ("project", "exact")
ROWS = ("exact", "mc")
DTYPES = ("float32", "float16")
SKETCH_CURVATURES = ("gauss_newton", "identity")
CURVATURE_EXAMPLES = ("all", "seeded")
METHODS = ("exact", "sketch")
DEFAULT_DIM = 9904  # MiniLM (38 Linear, 12 LayerNorm layers) at k = 16: the README's sketch table chooses it


@dataclass(frozen=True)
class SketchConfig:
    """One sketch index of a model's training set: N × d, one row per training example."""

    dim: int = _f(
        DEFAULT_DIM, "target sketch dimension d; the factor width k per layer is the one closest to it"
    )
    projection: str = _f("gaussian", f"Kronecker factors: {' | '.join(PROJECTIONS)} (seeded)")
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
        data = asdict(self)
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


@dataclass(frozen=True)
class SketchParams:
    """The ``sketch`` job: build (or finish) one sketch index of the workspace's model."""

    config: SketchConfig = field(default_factory=SketchConfig, metadata={"help": "sketch settings"})
    model_id: int | None = _f(None, "model id in the store (None = the workspace's)")

    def validate(self) -> SketchParams:
        self.config.validate()
        return self

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> SketchParams:
        data = dict(data)
        return from_dict(cls, {**data, "config": from_dict(SketchConfig, data.pop("config", {}))})


jobs.register_kind("sketch", SketchParams, "gradient sketches of the training set (resumable blocks)")
