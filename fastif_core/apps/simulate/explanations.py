"""Which examples the study looks at: the test examples (half predicted correctly, half incorrectly,
seeded, from a browse filter) and, for each, its explanation examples by kind (the task model's most
helpful and most harmful training examples for its gold-label loss, and random training examples per
label)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any

from fastif_core.apps.simulate.config import SimulateConfig, TestFilter
from fastif_core.errors import ConfigError
from fastif_core.store import ExampleRow, Store
from fastif_core.store.records import ExampleFilter


def example_filter(f: TestFilter, model_id: int) -> ExampleFilter:
    """The store's ``ExampleFilter`` of a study's test filter: ``model_id``'s predictions, outside the
    training set."""
    given = {n.name: tuple(getattr(f, n.name)) or None for n in fields(f) if n.name != "search"}
    return ExampleFilter(**given, search=f.search, model_id=model_id, in_training_set=False)


def select_test_examples(store: Store, model_id: int, cfg: SimulateConfig) -> list[ExampleRow]:
    """``ceil(T/2)`` correctly and ``floor(T/2)`` incorrectly predicted examples outside the training set
    matching ``cfg.filter``, drawn with ``cfg.seed`` (ConfigError when the filter has too few)."""
    base = example_filter(cfg.filter, model_id)
    wanted = {True: (cfg.test_examples + 1) // 2, False: cfg.test_examples // 2}
    chosen: list[ExampleRow] = []
    for correct, n in wanted.items():
        pool = store.query_examples(replace(base, correct=correct), order_by="id", limit=None)
        if len(pool) < n:
            which = "correctly" if correct else "incorrectly"
            raise ConfigError(
                f"test_examples={cfg.test_examples} is invalid: it needs {n} {which} predicted examples outside "
                f"the training set and the filter matches {len(pool)}: allowed a smaller test_examples or a "
                "wider filter"
            )
        chosen += random.Random(f"{cfg.seed}:{correct}").sample(pool, n)
    return chosen


def random_explanations(
    train_labels: Sequence[int], label_names: Sequence[str], per_label: int, seed: Any
) -> dict[str, list[int]]:
    """``per_label`` random training positions of each gold label (fewer when a label has fewer), seeded."""
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = {}
    for pos, y in enumerate(train_labels):
        by_label.setdefault(int(y), []).append(pos)
    out = {}
    for i, name in enumerate(label_names):
        pool = by_label.get(i, [])
        out[name] = sorted(rng.sample(pool, min(per_label, len(pool))))
    return out


def explanation_sets(
    influence: dict[str, Any],
    train_pos: dict[str, int],
    train_labels: Sequence[int],
    label_names: Sequence[str],
    per_kind: int,
    seed: Any,
) -> dict[str, list[int]]:
    """Training positions per kind: ``helpful``, ``harmful`` (from an influence answer's ranked lists),
    ``random`` (``per_kind`` per label, pooled) and ``random:<label>`` for each label."""
    per_label = random_explanations(train_labels, label_names, per_kind, seed)
    out = {
        "helpful": [train_pos[r["train_id"]] for r in influence["helpful"][:per_kind]],
        "harmful": [train_pos[r["train_id"]] for r in influence["harmful"][:per_kind]],
        "random": [p for name in label_names for p in per_label[name]],
    }
    return {**out, **{f"random:{name}": per_label[name] for name in label_names}}
