"""Settings of the error-correction / data-augmentation application (paper Sec. 6.3) and its job kinds.

Torch-free on purpose: the dashboard imports this module to build and enqueue ``correct`` and
``activate_model`` jobs, the CLI to parse its flags, and :mod:`fastif_core.apps.correct.loop` (the worker
side) to run them. The same :class:`CorrectConfig` is stored as JSON with every run it produced.

A slice is written ``key=value[,key=value...]`` over the store's example fields
(:data:`SLICE_KEYS`), e.g. ``heuristic=lexical_overlap,label=non-entailment``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from fastif_core.config import GRADIENT_L2, STestConfig, config_hash, from_dict, to_dict
from fastif_core.errors import ConfigError

METHODS = ("helpful", "harmful", "random", "anchors")
SLICE_KEYS = ("dataset", "split", "heuristic", "subcase", "genre", "template", "label")
GROUP_KEYS = (
    "heuristic",
    "subcase",
    "genre",
    "template",
)  # the first one in the target groups the evaluation
TRAIN_POOL = "train"


def _f(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse's name
    return field(default=default, metadata={"help": help})


def parse_slice(text: str, name: str = "slice") -> dict[str, str]:
    """``"heuristic=lexical_overlap,label=non-entailment"`` -> ``{"heuristic": ..., "label": ...}``."""
    allowed = f"key=value[,key=value] with keys {', '.join(SLICE_KEYS)}"
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        key, eq, value = part.strip().partition("=")
        key, value = key.strip(), value.strip()
        if not eq or key not in SLICE_KEYS or not value or key in out:
            raise ConfigError(f"{name}={text!r} is invalid: allowed {allowed}")
        out[key] = value
    return out


def slice_text(spec: dict[str, str]) -> str:
    """The canonical text of a slice (keys in :data:`SLICE_KEYS` order)."""
    return ",".join(f"{k}={spec[k]}" for k in SLICE_KEYS if k in spec)


def _check(cond: bool, name: str, allowed: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{name}={value!r} is invalid: allowed {allowed}")


@dataclass(frozen=True)
class CorrectConfig:
    """One correction (or, with a pool other than ``train``, augmentation) run: the target slice, the
    loop (I iterations × A anchors, k candidates, one SGD step on the top m), methods and seeds."""

    slice: str = _f("heuristic=lexical_overlap,label=non-entailment", "target slice: key=value[,key=value]")
    pool: str = _f(
        TRAIN_POOL, "candidates: 'train' (the training set) or a new source: demo:augment, a file, hf:..."
    )
    pool_size: int | None = _f(
        None,
        "use at most this many examples of a new pool: a sample that keeps each slice's share (HANS "
        "heuristic/subcase, MNLI genre), drawn with seed 0 so every seed of a comparison has the same pool",
    )
    iterations: int = _f(10, "iterations I: anchors drawn, influence, one gradient step, evaluation")
    anchors: int = _f(
        10, "anchors A drawn from the anchor pool per iteration (one s_test for their mean loss)"
    )
    k: int = _f(1000, "candidates: the k nearest of the anchors' mean feature (capped at the pool size)")
    top: int = _f(10, "examples m of the chosen kind in each gradient step")
    lr: float = _f(1e-4, "SGD learning rate of the step on the trainable parameters")
    seeds: int = _f(3, "seeds S (anchor draws and random picks differ; the same for every method)")
    seed: int = _f(0, "first seed; also splits the target slice unless split_seed is set")
    split_seed: int | None = _f(
        None,
        "seed of the anchor/evaluation split and the evaluation subsample (None = seed); with "
        "seed=s, seeds=1, split_seed=0 a run reproduces seed s of a seed=0 run",
    )
    methods: tuple[str, ...] = _f(METHODS, f"methods, each with the same budget: {', '.join(METHODS)}")
    anchor_fraction: float = _f(0.5, "share of the target slice in the anchor pool (the rest is evaluated)")
    max_eval: int | None = _f(None, "evaluate at most this many examples per slice (seeded subsample)")
    heldout: str = _f("auto", "the 'elsewhere' evaluation set: auto (split heldout, else dev) or a slice")
    s_test: STestConfig = field(default_factory=STestConfig.default, metadata={"help": "s_test solver"})
    gradient_l2: str = _f("none", f"L2 term in the influence gradients: {' | '.join(GRADIENT_L2)}")
    score_batch_size: int = _f(64, "candidates per scoring batch")
    save: str | None = _f(None, "save this method's final model (first seed) as a new model version")
    model_id: int | None = _f(None, "the model the run starts from (None = the workspace's active model)")

    def validate(self) -> CorrectConfig:
        parse_slice(self.slice)
        _check(self.iterations >= 1, "iterations", "an integer >= 1", self.iterations)
        _check(self.anchors >= 1, "anchors", "an integer >= 1", self.anchors)
        _check(self.k >= 1, "k", "an integer >= 1", self.k)
        _check(self.top >= 1, "top", "an integer >= 1", self.top)
        _check(self.lr > 0 and self.lr != float("inf"), "lr", "a number > 0", self.lr)
        _check(self.seeds >= 1, "seeds", "an integer >= 1", self.seeds)
        _check(
            0.0 < self.anchor_fraction < 1.0,
            "anchor_fraction",
            "0 < anchor_fraction < 1",
            self.anchor_fraction,
        )
        _check(self.max_eval is None or self.max_eval >= 1, "max_eval", "an integer >= 1", self.max_eval)
        _check(
            bool(self.methods)
            and len(set(self.methods)) == len(self.methods)
            and all(m in METHODS for m in self.methods),
            "methods",
            ", ".join(METHODS),
            ",".join(self.methods),
        )
        _check(
            self.save is None or self.save in self.methods,
            "save",
            f"one of the run's methods ({', '.join(self.methods)})",
            self.save,
        )
        _check(
            bool(self.pool.strip()), "pool", "'train' or a source (demo:augment, a file, hf:...)", self.pool
        )
        _check(
            self.pool_size is None or (self.augmenting and self.pool_size >= 1),
            "pool_size",
            "an integer >= 1, with a pool other than 'train'",
            self.pool_size,
        )
        _check(self.gradient_l2 in GRADIENT_L2, "gradient_l2", " | ".join(GRADIENT_L2), self.gradient_l2)
        _check(self.score_batch_size >= 1, "score_batch_size", "an integer >= 1", self.score_batch_size)
        if self.heldout != "auto":
            parse_slice(self.heldout, "heldout")
        self.s_test.validate()
        return self

    @property
    def data_seed(self) -> int:
        """The seed that splits the target slice and subsamples every evaluation part."""
        return self.seed if self.split_seed is None else self.split_seed

    @property
    def target(self) -> dict[str, str]:
        return parse_slice(self.slice)

    @property
    def augmenting(self) -> bool:
        return self.pool.strip() != TRAIN_POOL

    @property
    def kind(self) -> str:
        """The stored run's kind: ``correct`` (training-set candidates) or ``augment`` (a new pool)."""
        return "augment" if self.augmenting else "correct"

    def result_key(self) -> str:
        """Hash of what determines the curves (``save`` only says which final model to keep)."""
        norm = replace(self, save=None, split_seed=self.data_seed)  # split_seed=None means seed
        key = {**to_dict(norm), "methods": list(self.methods)}
        if self.pool_size is None:  # runs stored before pool_size existed keep their key
            del key["pool_size"]
        return config_hash(key)

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> CorrectConfig:
        data = dict(data)
        given = data.pop("s_test", None)
        s_test = STestConfig.default() if given is None else from_dict(STestConfig, given)
        methods = tuple(data.pop("methods", METHODS))
        return from_dict(cls, {**data, "s_test": s_test, "methods": methods})


@dataclass(frozen=True)
class ActivateParams:
    """Make a stored model version the workspace's active model (its features and index built if missing)."""

    model_id: int = field(metadata={"help": "id of the model version to serve"})

    def validate(self) -> ActivateParams:
        _check(
            isinstance(self.model_id, int) and self.model_id >= 1,
            "model_id",
            "a model id >= 1",
            self.model_id,
        )
        return self
