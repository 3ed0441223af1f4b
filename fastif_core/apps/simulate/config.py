"""Settings of the simulatability study (``SimulateConfig``, :mod:`fastif_core.apps.simulate`): the same
dataclass feeds ``fastif simulate``, the ``simulate`` job and the dashboard's Explain page, and is stored
with every result it produced, and the ``simulate`` job kind's parameters (``SimulateParams``, registered
with :mod:`fastif_core.jobs` on import; the worker's handler is :mod:`fastif_core.apps.simulate.job`).
Light on purpose (no torch, no database): ``fastif --help`` and the dashboard import it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from fastif_core.config import (
    METHODS,
    InfluenceConfig,
    SketchQueryConfig,
    STestConfig,
    _f,
    _require,
    config_hash,
    from_dict,
    sketch_query_field,
    to_dict,
)

KINDS = ("helpful", "harmful", "random")  # the explanation kinds of Fig. 5; random also per label
DEFAULT_K = 10_000  # the paper's k nearest candidates (capped at the training set's size)
DISPLAY_ONLY = ("lr_chunk",)  # fields that change how fast, never what is computed


@dataclass(frozen=True)
class TestFilter:
    """The browse filters the test examples are drawn from (empty = any value); training examples are
    never test examples, and correctness is the draw's (half correct, half incorrect)."""

    __test__ = False  # not a pytest test class when imported into one

    dataset: tuple[str, ...] = _f((), "datasets (any of)")
    split: tuple[str, ...] = _f((), "splits (any of)")
    label: tuple[str, ...] = _f((), "gold labels (any of)")
    predicted: tuple[str, ...] = _f((), "the task model's predicted labels (any of)")
    genre: tuple[str, ...] = _f((), "MNLI genres (any of)")
    heuristic: tuple[str, ...] = _f((), "HANS heuristics (any of)")
    subcase: tuple[str, ...] = _f((), "HANS subcases (any of)")
    search: str | None = _f(None, "text in the premise, hypothesis or id")

    @classmethod
    def from_example_filter(cls, f: Any) -> TestFilter:
        """The fields of a browse ``ExampleFilter`` this study uses (a single value becomes a 1-tuple)."""
        pick = {n.name: getattr(f, n.name) for n in fields(cls) if n.name != "search"}
        return cls(
            **{k: (v,) if isinstance(v, str) else tuple(v or ()) for k, v in pick.items()}, search=f.search
        )


@dataclass(frozen=True)
class SimulateConfig:
    """Do influential examples explain the task model? One SGD step of a simulator (trained on the task
    model's predictions) on each explanation example, then its loss on the test input (paper Sec. 6.1)."""

    test_examples: int = _f(20, "test examples T: ceil(T/2) predicted correctly, floor(T/2) incorrectly")
    learning_rates: int = _f(50, "learning rates in the grid, log-spaced from lr_min to lr_max")
    lr_min: float = _f(1e-5, "smallest learning rate of the grid")
    lr_max: float = _f(10**-2.5, "largest learning rate of the grid (the paper: 10^-2.5)")
    per_kind: int = _f(10, "explanation examples per kind: most helpful, most harmful, random per label")
    seed: int = _f(0, "seed of the test-example draw and of the random explanations")
    k: int | None = _f(DEFAULT_K, "influence candidates: the k nearest (capped at N); None = full")
    s_test: STestConfig = field(default_factory=STestConfig.default, metadata={"help": "s_test solver"})
    method: str = _f(
        "exact",
        "explanations from: exact (FastIF over the k nearest, the reference) | sketch (the sketch index, "
        "all N training examples in one product)",
    )
    sketch: SketchQueryConfig = sketch_query_field()
    filter: TestFilter = field(
        default_factory=TestFilter, metadata={"help": "browse filters the test examples are drawn from"}
    )
    simulator_epochs: float = _f(0.0, "simulator fine-tuning epochs (0 = the task model's setting)")
    lr_chunk: int = _f(10, "learning rates evaluated in one batched forward (memory: chunk x parameters)")

    def validate(self) -> SimulateConfig:
        _require(self.test_examples >= 2, "test_examples", "an integer >= 2", self.test_examples)
        _require(self.learning_rates >= 1, "learning_rates", "an integer >= 1", self.learning_rates)
        _require(_positive(self.lr_min), "lr_min", "a finite number > 0", self.lr_min)
        _require(
            _positive(self.lr_max) and self.lr_max >= self.lr_min,
            "lr_max",
            f"a finite number >= lr_min ({self.lr_min})",
            self.lr_max,
        )
        _require(self.per_kind >= 1, "per_kind", "an integer >= 1", self.per_kind)
        _require(self.k is None or self.k >= 1, "k", "an integer >= 1 or None (full)", self.k)
        _require(self.simulator_epochs >= 0, "simulator_epochs", "a number >= 0", self.simulator_epochs)
        _require(self.lr_chunk >= 1, "lr_chunk", "an integer >= 1", self.lr_chunk)
        for f in fields(self.filter):
            value = getattr(self.filter, f.name)
            ok = (
                value is None or isinstance(value, str)
                if f.name == "search"
                else isinstance(value, tuple) and all(isinstance(v, str) and v for v in value)
            )
            _require(
                ok,
                f"filter.{f.name}",
                "a list of non-empty strings" if f.name != "search" else "a string",
                value,
            )
        _require(self.method in METHODS, "method", " | ".join(METHODS), self.method)
        self.sketch.validate()
        self.s_test.validate()
        return self

    def grid(self) -> list[float]:
        """The learning rates, log-spaced from ``lr_min`` to ``lr_max`` (one value: ``lr_min``)."""
        n, lo, hi = self.learning_rates, math.log10(self.lr_min), math.log10(self.lr_max)
        return [10 ** (lo + (hi - lo) * i / (n - 1)) if n > 1 else self.lr_min for i in range(n)]

    def influence_config(self, num_train: int) -> InfluenceConfig:
        """The influence query behind the explanations (k capped at the training set's size)."""
        k = None if self.k is None else min(self.k, num_train)
        return InfluenceConfig(s_test=self.s_test, k=k, top=self.per_kind).validate()

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> SimulateConfig:
        data = dict(data)
        sketch = SketchQueryConfig.from_json_dict(data.pop("sketch", {}) or {})
        given = data.pop("s_test", None)
        s_test = STestConfig.default() if given is None else from_dict(STestConfig, given)
        flt = {
            k: tuple(v) if isinstance(v, list) else v for k, v in dict(data.pop("filter", {}) or {}).items()
        }
        return from_dict(
            cls, {**data, "s_test": s_test, "sketch": sketch, "filter": from_dict(TestFilter, flt)}
        )


def _positive(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def result_key(cfg: SimulateConfig) -> str:
    """Hash under which a study is stored: every setting but the display-only ones."""
    data = to_dict(cfg)
    for name in DISPLAY_ONLY:
        data.pop(name)
    if cfg.method == "exact":  # studies stored before the sketch method keep their key
        data.pop("method")
        data.pop("sketch")
    else:
        data["sketch"] = cfg.sketch.key_fields()
    return config_hash(data)


JOB_KIND = "simulate"


@dataclass(frozen=True)
class SimulateParams:
    """A ``simulate`` job: a study of the workspace's model (``model_id`` keys the job to the model it was
    submitted for, so after a re-prepare the same settings are a new job)."""

    config: SimulateConfig = field(default_factory=SimulateConfig, metadata={"help": "study settings"})
    model_id: int | None = _f(None, "model id in the store (None = the workspace's)")

    def validate(self) -> SimulateParams:
        self.config.validate()
        return self

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> SimulateParams:
        data = dict(data)
        return from_dict(cls, {**data, "config": SimulateConfig.from_json_dict(data.pop("config", {}) or {})})
