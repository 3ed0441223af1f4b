"""The test set of a graph, chosen by slices with the browse page's filters (``ExampleFilter``).

Default (the paper's choice where the data has it): incorrectly predicted examples outside the training
set, sliced by heuristic in the HANS-style (2-way, "non-entailment") datasets and by dataset otherwise,
``per_slice`` from each. On the 8K MNLI workspace that is 100 from MNLI and 100 from each HANS heuristic; on the built-in
corpus its own ``demo`` evaluation pairs and the three heuristics of ``demo-hans``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastif_core.apps.graph.config import GraphConfig
from fastif_core.errors import ConfigError


@dataclass(frozen=True)
class Selection:
    """Test example ids (grouped by slice, slices sorted by name) and each one's slice index."""

    ids: list[str]
    slice_index: list[int]  # (M,) into ``slices``
    slices: list[str]

    def counts(self) -> dict[str, int]:
        return {name: self.slice_index.count(s) for s, name in enumerate(self.slices)}


def slice_of(row: Any, slice_by: str, hans: frozenset[str] = frozenset()) -> str | None:
    """The slice name of an example row (``ExampleRow``) under ``slice_by``; None = no value. ``auto``:
    the heuristic for examples of the HANS-style datasets ``hans``, else the dataset (MNLI-style pairs
    built on a HANS construction stay in their dataset's slice)."""
    if slice_by == "auto":
        return (row.slices.get("heuristic") if row.dataset in hans else None) or row.dataset
    if slice_by in ("dataset", "split", "label", "predicted"):
        return getattr(row, slice_by)
    return row.slices.get(slice_by)


def choose(
    rows: Sequence[Any], slice_by: str, per_slice: int, seed: int, hans: frozenset[str] = frozenset()
) -> Selection:
    """``per_slice`` rows of each slice, a seeded sample (the same for the same rows and seed)."""
    groups: dict[str, list[str]] = {}
    for row in rows:
        name = slice_of(row, slice_by, hans)
        if name:
            groups.setdefault(str(name), []).append(row.id)
    ids: list[str] = []
    index: list[int] = []
    names = sorted(groups)
    for s, name in enumerate(names):
        members = sorted(groups[name])
        picked = sorted(random.Random(f"{seed}:{name}").sample(members, min(per_slice, len(members))))
        ids += picked
        index += [s] * len(picked)
    return Selection(ids, index, names)


def candidate_filter(cfg: GraphConfig, model_id: int) -> Any:
    """The browse filter of the examples a test set is drawn from (never the training set)."""
    from fastif_core.store import ExampleFilter

    lists = {name: list(values) for name, values in cfg.filters().items()}
    return ExampleFilter(
        **lists, correct=False if cfg.incorrect_only else None, in_training_set=False, model_id=model_id
    )


def select_test_set(store: Any, cfg: GraphConfig, model_id: int) -> Selection:
    """The graph's test examples from the store; a ConfigError naming the filters when none match."""
    rows = store.query_examples(candidate_filter(cfg, model_id), limit=None)
    hans = frozenset(d.name for d in store.list_datasets() if "non-entailment" in d.labels)
    chosen = choose(rows, cfg.slice_by, cfg.per_slice, cfg.seed, hans)
    if not chosen.ids:
        which = ", ".join(f"{k}={list(v)}" for k, v in cfg.filters().items()) or "no filter"
        wrong = " predicted incorrectly" if cfg.incorrect_only else ""
        raise ConfigError(
            f"no evaluation example{wrong} matches {which} (slice_by={cfg.slice_by}): list them with "
            "`fastif examples`, or use --all to include correctly predicted examples"
        )
    return chosen
