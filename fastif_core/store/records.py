"""Plain dataclasses the store returns (and a few it accepts): never live ORM objects.

They are safe to cache, pickle, send across processes and hand to Streamlit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


class ExampleLike(Protocol):
    """What :meth:`Store.add_examples` needs from a record (``fastif_core.data.NLIExample`` fits)."""

    id: str
    premise: str
    hypothesis: str
    label: str
    dataset: str
    split: str
    slices: dict[str, str]
    extra: dict[str, str]


@dataclass(frozen=True)
class DatasetInfo:
    id: int
    name: str
    label_scheme: str
    labels: list[str]
    source: str
    counts: dict[str, int]  # split -> number of examples
    num_examples: int
    created_at: datetime


@dataclass(frozen=True)
class ExampleRow:
    """An example, plus the prediction of the model the query asked about (None when there is none)."""

    id: str
    dataset: str
    split: str
    premise: str
    hypothesis: str
    label: str
    slices: dict[str, str]
    extra: dict[str, str]
    train_pos: int | None = None
    predicted: str | None = None
    correct: bool | None = None
    confidence: float | None = None
    probs: list[float] | None = None
    in_workspace: bool = True  # False: its source is no longer one of the workspace's (kept for old results)

    @property
    def genre(self) -> str | None:
        return self.slices.get("genre")

    @property
    def heuristic(self) -> str | None:
        return self.slices.get("heuristic")

    @property
    def subcase(self) -> str | None:
        return self.slices.get("subcase")

    def to_record(self) -> Any:
        """This example as a ``fastif_core.data.NLIExample``."""
        from fastif_core.data.records import NLIExample

        return NLIExample(
            id=self.id,
            premise=self.premise,
            hypothesis=self.hypothesis,
            label=self.label,
            dataset=self.dataset,
            split=self.split,
            slices=dict(self.slices),
            extra=dict(self.extra),
        )


@dataclass(frozen=True)
class ExampleFilter:
    """Filters of :meth:`Store.query_examples` and friends; None = no constraint.

    A field given as a list/tuple matches any of its values. ``predicted`` and ``correct`` refer to
    the predictions of ``model_id`` (None = the active model, else the most recently created one).
    ``search`` is a case-insensitive substring of the premise, hypothesis or id. ``in_workspace`` True
    (the default) keeps the examples of the workspace's current sources only.
    """

    dataset: str | Sequence[str] | None = None
    split: str | Sequence[str] | None = None
    label: str | Sequence[str] | None = None
    predicted: str | Sequence[str] | None = None
    correct: bool | None = None
    genre: str | Sequence[str] | None = None
    heuristic: str | Sequence[str] | None = None
    subcase: str | Sequence[str] | None = None
    template: str | Sequence[str] | None = None
    search: str | None = None
    in_training_set: bool | None = None
    model_id: int | None = None
    in_workspace: bool | None = True  # True: only examples of the workspace's current sources


@dataclass(frozen=True)
class ExampleSummary:
    """Counts for a filter: all matching examples, those with a prediction, those predicted correctly."""

    count: int
    predicted: int
    correct: int

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.predicted if self.predicted else None


@dataclass(frozen=True)
class GroupSummary(ExampleSummary):
    """:class:`ExampleSummary` for one value of a grouping column (e.g. one HANS heuristic)."""

    value: str | None


@dataclass(frozen=True)
class ModelInfo:
    id: int
    name: str
    checkpoint_path: str
    train_config: dict[str, Any]
    config_hash: str
    metrics: dict[str, Any]
    label_names: list[str]
    created_at: datetime
    lineage: dict[str, Any] = field(default_factory=dict)
    active: bool = False


@dataclass(frozen=True)
class PredictionIn:
    """One prediction to save: probabilities in the model's label order, label in the example's scheme."""

    example_id: str
    probs: Sequence[float]
    predicted: str
    correct: bool


@dataclass(frozen=True)
class PredictionInfo:
    model_id: int
    example_id: str
    probs: list[float]
    predicted: str
    confidence: float
    correct: bool


@dataclass(frozen=True)
class NeighborInfo:
    """The ``rank``-th nearest training example (0 = nearest) of a query, with its text."""

    rank: int
    train_id: str
    distance: float
    premise: str
    hypothesis: str
    label: str


@dataclass(frozen=True)
class ScoreInfo:
    """One candidate's influence; rank 0 = most helpful (most negative value)."""

    train_id: str
    value: float
    rank: int
    premise: str = ""
    hypothesis: str = ""
    label: str = ""


@dataclass(frozen=True)
class InfluenceRunInfo:
    """A stored influence query; ``scores`` sorted by value ascending (most helpful first)."""

    id: int
    model_id: int
    example_id: str
    config: dict[str, Any]
    config_hash: str
    num_candidates: int
    timings: dict[str, Any]
    s_test_stats: dict[str, Any]
    created_at: datetime
    job_id: int | None
    scores: list[ScoreInfo] = field(default_factory=list)

    def helpful(self, n: int | None = None) -> list[ScoreInfo]:
        """The ``n`` most helpful (most negative) scores, most helpful first."""
        return [s for s in self.scores if s.value < 0][:n]

    def harmful(self, n: int | None = None) -> list[ScoreInfo]:
        """The ``n`` most harmful (most positive) scores, most harmful first."""
        return [s for s in reversed(self.scores) if s.value > 0][:n]


@dataclass(frozen=True)
class JobInfo:
    """A job row. ``status`` is one of queued, running, done, failed, cancelled."""

    id: int
    kind: str
    params: dict[str, Any]
    params_hash: str
    status: str
    priority: int
    attempts: int
    max_attempts: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    heartbeat_at: datetime | None
    device: str | None
    progress: float
    message: str
    error: str | None
    result: dict[str, Any] | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed", "cancelled")

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to finish (or to the last heartbeat while running)."""
        end = self.finished_at or self.heartbeat_at
        return (end - self.started_at).total_seconds() if end and self.started_at else None


@dataclass(frozen=True)
class AppResultInfo:
    """A stored application result (``app`` is "graph", "correction" or "bench")."""

    id: int
    app: str
    kind: str
    model_id: int | None
    config: dict[str, Any]
    config_hash: str
    result: dict[str, Any]
    created_at: datetime
    job_id: int | None


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    host: str
    pid: int
    devices: list[str]
    status: str
    current_job_id: int | None
    started_at: datetime
    heartbeat_at: datetime
