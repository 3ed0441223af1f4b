"""The one record type for an NLI example, and the label schemes (3-way MNLI, 2-way HANS)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from fastif_core.errors import ConfigError, DataFormatError

MNLI_LABELS: tuple[str, ...] = ("entailment", "neutral", "contradiction")
HANS_LABELS: tuple[str, ...] = ("entailment", "non-entailment")
NO_CONSENSUS = "-"  # MNLI's gold label when the annotators did not agree
SLICE_KEYS: tuple[str, ...] = ("genre", "heuristic", "subcase", "template")


@dataclass(frozen=True)
class NLIExample:
    """One premise/hypothesis pair with its gold label.

    ``id`` is stable and unique: ``"<dataset>:<split>:<key>"`` where ``key`` is the file's own id
    (pairID, index) or the 0-based data row number. ``slices`` holds the fields accuracy is broken
    down by (``genre``; ``heuristic``, ``subcase``, ``template``); ``extra`` keeps other columns as text.
    """

    id: str
    premise: str
    hypothesis: str
    label: str
    dataset: str
    split: str
    slices: dict[str, str] = field(default_factory=dict, hash=False)
    extra: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def key(self) -> str:
        """The part of ``id`` after ``<dataset>:<split>:`` (the whole id when it has another form)."""
        prefix = f"{self.dataset}:{self.split}:"
        return self.id[len(prefix) :] if self.id.startswith(prefix) else self.id


def make_id(dataset: str, split: str, key: str | int) -> str:
    """The stable example id ``"<dataset>:<split>:<key>"``, e.g. ``"mnli:dev_matched:123"``."""
    return f"{dataset}:{split}:{key}"


def clean_name(name: str) -> str:
    """A dataset or split name usable inside ids: lower case, ``[a-z0-9_.-]`` only."""
    cleaned = re.sub(r"[^a-z0-9_.-]+", "_", name.strip().lower()).strip("_")
    return cleaned or "data"


def labels_for(num_labels: int) -> tuple[str, ...]:
    """The label names of a ``num_labels``-way model: 3 → MNLI, 2 → HANS (entailment / non-entailment)."""
    if num_labels == 3:
        return MNLI_LABELS
    if num_labels == 2:
        return HANS_LABELS
    raise ConfigError(f"num_labels={num_labels!r} is invalid: allowed 2 (HANS) or 3 (MNLI)")


def to_two_way(label: str) -> str:
    """Map a 3-way (or 2-way) label to HANS's scheme: neutral and contradiction → non-entailment."""
    if label == "entailment":
        return "entailment"
    if label in ("neutral", "contradiction", "non-entailment"):
        return "non-entailment"
    raise DataFormatError(f"unknown label {label!r}: allowed {', '.join(MNLI_LABELS + HANS_LABELS[1:])}")


def label_index(label: str, labels: Sequence[str]) -> int:
    """Position of ``label`` in ``labels`` (a 3-way label is first mapped to 2-way for a 2-way scheme)."""
    if label not in labels and tuple(labels) == HANS_LABELS:
        label = to_two_way(label)
    if label not in labels:
        raise DataFormatError(f"unknown label {label!r}: allowed {', '.join(labels)}")
    return list(labels).index(label)
