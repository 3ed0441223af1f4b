"""Settings of an influence graph (the ``graph`` job kind): which test examples, by which slices, how
many candidates, how the picture is laid out. The same dataclass feeds ``fastif graph``, the job queue
and the dashboard's Graphs page, and is stored with every graph it produced.

Kept apart from :mod:`fastif_core.apps.graph` (which pulls in the engine and the worker) so that the
CLI's parser and the dashboard can build and enqueue a graph without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from fastif_core.config import (
    METHODS,
    InfluenceConfig,
    SketchQueryConfig,
    _f,
    _require,
    from_dict,
    sketch_query_field,
    to_dict,
)

# ExampleFilter fields a test set can be restricted by (the browse page's filters)
FILTER_FIELDS = ("dataset", "split", "label", "genre", "heuristic", "subcase")
# how the chosen examples are split into slices; "auto" = heuristic in HANS-style datasets, else the dataset
SLICE_BY = ("auto", "dataset", "split", "label", "predicted", "genre", "heuristic", "subcase")


def _values(help_: str) -> Any:
    return field(default=(), metadata={"help": help_})


@dataclass(frozen=True)
class GraphConfig:
    """An influence graph: test examples chosen by slices, their kNN (or all) candidates, the layout."""

    per_slice: int = _f(100, "test examples drawn per slice (all of a slice when it has fewer)")
    incorrect_only: bool = _f(True, "only examples the model predicts incorrectly (the paper's choice)")
    dataset: tuple[str, ...] = _values("only these datasets (empty = every dataset)")
    split: tuple[str, ...] = _values("only these splits (empty = every split but the training set)")
    label: tuple[str, ...] = _values("only these gold labels")
    genre: tuple[str, ...] = _values("only these MNLI genres")
    heuristic: tuple[str, ...] = _values("only these HANS heuristics")
    subcase: tuple[str, ...] = _values("only these HANS subcases")
    slice_by: str = _f(
        "auto", "slices: auto (heuristic in HANS-style datasets, else dataset) | " + " | ".join(SLICE_BY[1:])
    )
    influence: InfluenceConfig = field(
        default_factory=lambda: InfluenceConfig(top=1),
        metadata={"help": "candidates (k nearest, or full) and the s_test solver of every test example"},
    )
    method: str = _f(
        "exact",
        "influence values: exact (FastIF, the reference) | sketch (the sketch index: the same candidates, "
        "each test's row in one product)",
    )
    sketch: SketchQueryConfig = sketch_query_field()
    seed: int = _f(0, "seed of the per-slice sample and of the layout's jitter")
    inner_radius: float = _f(0.8, "training nodes lie in the disc of this radius (test nodes on radius 1)")
    jitter: float = _f(0.3, "random angular jitter of the test nodes, as a fraction of their spacing")
    layout_iterations: int = _f(500, "maximum Weiszfeld iterations of the layout")
    model_id: int | None = _f(None, "model id in the store (None = the workspace's)")
    row_block: int = _f(
        32,
        "test examples scored together (memory ≈ row_block × P × 4 bytes + the solver's; larger shares each "
        "candidate's backward among more tests; the values do not depend on it)",
    )

    def validate(self) -> GraphConfig:
        _require(self.per_slice >= 1, "per_slice", "an integer >= 1", self.per_slice)
        _require(self.slice_by in SLICE_BY, "slice_by", " | ".join(SLICE_BY), self.slice_by)
        _require(0.0 < self.inner_radius < 1.0, "inner_radius", "a number in (0, 1)", self.inner_radius)
        _require(0.0 <= self.jitter < 0.5, "jitter", "a number in [0, 0.5)", self.jitter)
        _require(self.layout_iterations >= 1, "layout_iterations", "an integer >= 1", self.layout_iterations)
        _require(self.row_block >= 1, "row_block", "an integer >= 1", self.row_block)
        for name in FILTER_FIELDS:
            values = getattr(self, name)
            ok = isinstance(values, tuple) and all(isinstance(v, str) and v for v in values)
            _require(ok, name, "a list of non-empty names", values)
        _require(self.method in METHODS, "method", " | ".join(METHODS), self.method)
        self.sketch.validate()
        self.influence.validate()
        return self

    def filters(self) -> dict[str, tuple[str, ...]]:
        """The non-empty test-set filters, by ExampleFilter field."""
        return {name: getattr(self, name) for name in FILTER_FIELDS if getattr(self, name)}

    def stored(self) -> dict[str, Any]:
        """The settings that determine the graph (``influence.top`` only selects what a query shows;
        ``row_block`` only how the matrix is computed)."""
        data = to_dict(self)
        data["influence"].pop("top")
        data.pop("row_block")
        if self.method == "exact":  # graphs stored before the sketch method keep their key
            data.pop("method")
            data.pop("sketch")
        else:
            data["sketch"] = self.sketch.key_fields()
        return data

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> GraphConfig:
        data = dict(data)
        influence = InfluenceConfig.from_json_dict({"top": 1, **data.pop("influence", {})})
        sketch = SketchQueryConfig.from_json_dict(data.pop("sketch", {}) or {})
        lists = {
            name: tuple(data.pop(name)) for name in FILTER_FIELDS if isinstance(data.get(name), list | tuple)
        }
        return from_dict(cls, {**data, **lists, "influence": influence, "sketch": sketch})

    def with_model(self, model_id: int) -> GraphConfig:
        return replace(self, model_id=int(model_id))
