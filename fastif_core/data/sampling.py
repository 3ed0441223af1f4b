"""Subsets and fingerprints of example lists: a seeded sample stratified by slice, a content hash."""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence

from fastif_core.data.records import NLIExample

STRATA = ("genre", "heuristic", "subcase")  # the slices a sample keeps the proportions of


def stratum(ex: NLIExample) -> tuple[str, ...]:
    """The example's slice values (empty strings where it has none): its stratum."""
    return tuple(ex.slices.get(k, "") for k in STRATA)


def stratified_sample(examples: Sequence[NLIExample], n: int | None, seed: int = 0) -> list[NLIExample]:
    """At most ``n`` examples, each stratum (HANS heuristic/subcase, MNLI genre) keeping its share of the
    source (largest remainder), drawn with ``seed``; the file order is kept. ``n`` None: all of them."""
    if n is None or n >= len(examples):
        return list(examples)
    groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        groups[stratum(ex)].append(i)
    keys = sorted(groups)
    exact = {k: n * len(groups[k]) / len(examples) for k in keys}
    quota = {k: int(exact[k]) for k in keys}
    by_remainder = sorted(keys, key=lambda k: (-(exact[k] - quota[k]), k))
    for k in by_remainder[: n - sum(quota.values())]:
        quota[k] += 1
    rng = random.Random(seed)
    chosen = [i for k in keys for i in rng.sample(groups[k], quota[k])]
    return [examples[i] for i in sorted(chosen)]


def content_hash(examples: Iterable[NLIExample]) -> str:
    """A hash of the examples' ids, texts, labels, datasets, splits and slices, in order: equal for the
    same data, different as soon as one label or text changes."""
    digest = hashlib.sha256()
    for ex in examples:
        row = [ex.id, ex.premise, ex.hypothesis, ex.label, ex.dataset, ex.split, sorted(ex.slices.items())]
        digest.update(json.dumps(row, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]
