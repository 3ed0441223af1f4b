"""The examples a correction run looks at: the target slice split into an anchor pool and a disjoint
evaluation part, the evaluation part of every slice of the challenge data, and held-out data.

Given a store and a :class:`~fastif_core.apps.correct.config.CorrectConfig`, :func:`select` returns
:class:`LoopData` (records only; no model). The target slice ``heuristic=lexical_overlap,label=...``
is split with ``cfg.data_seed`` (``split_seed``, else ``seed``) into the anchor pool (``anchor_fraction``)
and its evaluation part; the other slices are the other values of its grouping key (the first of
``heuristic``, ``subcase``, ``genre``, ``template`` it names) among the same datasets with the same
remaining constraints, evaluated whole.
Training examples are never part of a slice. Every bad setting is a ConfigError before any model work.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

from fastif_core.apps.correct.config import GROUP_KEYS, CorrectConfig, parse_slice, slice_text
from fastif_core.data.records import NLIExample, to_two_way
from fastif_core.data.sampling import stratified_sample
from fastif_core.errors import ConfigError
from fastif_core.store import ExampleFilter, Store

HELDOUT = "heldout"


@dataclass(frozen=True)
class LoopData:
    """Records of one run: anchor pool, evaluation parts by slice name, and the held-out set."""

    target: str  # the target slice's canonical text
    anchor_pool: list[NLIExample]
    evals: dict[str, list[NLIExample]]  # slice text -> its evaluation part (the target's excludes the pool)
    heldout: list[NLIExample]
    heldout_name: str

    def parts(self) -> dict[str, list[NLIExample]]:
        """Every evaluation part, the held-out set under :data:`HELDOUT` (when there is one)."""
        return {**self.evals, **({HELDOUT: self.heldout} if self.heldout else {})}

    def sizes(self) -> dict[str, int]:
        return {"anchor_pool": len(self.anchor_pool), **{k: len(v) for k, v in self.parts().items()}}


def _rows(store: Store, spec: dict[str, str], model_id: int) -> list[NLIExample]:
    """Workspace members matching ``spec`` outside the training set, by id."""
    f = ExampleFilter(**spec, in_training_set=False, model_id=model_id)
    return [r.to_record() for r in store.query_examples(f, limit=None)]


def split_target(examples: list[NLIExample], fraction: float, seed: int) -> tuple[list, list]:
    """Seeded split of the target slice into (anchor pool, evaluation part), disjoint, both non-empty when
    the slice has two or more examples."""
    order = sorted(examples, key=lambda ex: ex.id)
    random.Random(f"fastif-correct:{seed}:split").shuffle(order)
    n_pool = min(max(1, round(fraction * len(order))), len(order) - 1) if len(order) > 1 else len(order)
    return order[:n_pool], order[n_pool:]


def _sample(examples: list[NLIExample], n: int | None, seed: int) -> list[NLIExample]:
    return stratified_sample(sorted(examples, key=lambda ex: ex.id), n, seed)


def sibling_slices(store: Store, spec: dict[str, str], model_id: int) -> dict[str, dict[str, str]]:
    """The target and its siblings: each value of the target's grouping key, the other constraints kept,
    within the target's datasets (just the target when it names no grouping key)."""
    key = next((k for k in GROUP_KEYS if k in spec), None)
    if key is None:
        return {slice_text(spec): spec}
    rest = {k: v for k, v in spec.items() if k != key}
    datasets = sorted({ex.dataset for ex in _rows(store, spec, model_id)})
    if "dataset" not in rest and datasets:
        rest["dataset"] = datasets if len(datasets) > 1 else datasets[0]  # type: ignore[assignment]
    values = store.distinct_values(key, ExampleFilter(**rest, in_training_set=False, model_id=model_id))
    specs = {slice_text({**spec, key: v}): {**rest, key: v} for v in values}
    return specs or {slice_text(spec): spec}


def heldout_rows(store: Store, cfg: CorrectConfig, model_id: int) -> tuple[str, list[NLIExample]]:
    """The 'elsewhere' set: ``cfg.heldout`` as a slice, or (auto) split ``heldout`` else ``dev`` of the
    training datasets; empty when the workspace has neither."""
    if cfg.heldout != "auto":
        spec = parse_slice(cfg.heldout, "heldout")
        return slice_text(spec), _rows(store, spec, model_id)
    train_sets = [g.value for g in store.summarize_by("dataset", in_training_set=True) if g.value]
    for split in ("heldout", "dev"):
        spec = {"dataset": train_sets, "split": split} if train_sets else {"split": split}
        rows = _rows(store, spec, model_id)  # type: ignore[arg-type]
        if rows:
            return f"split={split}", rows
    return "none", []


def select(store: Store, cfg: CorrectConfig, model_id: int) -> LoopData:
    """The run's examples; ConfigError (one line, nothing computed) for an empty slice or too few anchors."""
    spec = cfg.target
    target = _rows(store, spec, model_id)
    if len(target) < 2:
        raise ConfigError(
            f"slice={cfg.slice!r} matches {len(target)} evaluation example(s) of this workspace: "
            "allowed a slice with at least 2 (see `fastif examples` for the fields)"
        )
    pool, own_eval = split_target(target, cfg.anchor_fraction, cfg.data_seed)
    if cfg.anchors > len(pool):
        raise ConfigError(
            f"anchors={cfg.anchors} is larger than the anchor pool ({len(pool)} of the slice's "
            f"{len(target)} examples at anchor_fraction={cfg.anchor_fraction}): allowed "
            f"anchors <= {len(pool)}"
        )
    name = slice_text(spec)
    evals = {}
    for text, sib in sibling_slices(store, spec, model_id).items():
        rows = own_eval if text == name else _rows(store, sib, model_id)
        evals[text] = _sample(rows, cfg.max_eval, cfg.data_seed)
    evals.setdefault(name, _sample(own_eval, cfg.max_eval, cfg.data_seed))
    held_name, held = heldout_rows(store, cfg, model_id)
    pool_ids = {ex.id for ex in pool}
    held = [ex for ex in _sample(held, cfg.max_eval, cfg.data_seed) if ex.id not in pool_ids]
    return LoopData(name, pool, dict(sorted(evals.items())), held, held_name)


def encode_labeled(
    tokenizer: Any, records: list[NLIExample], label_names: tuple[str, ...], max_length: int
) -> Any:
    """``EncodedExamples`` whose labels index ``label_names``; a 2-way *non-entailment* on a 3-way model
    gets index C (the merged class of :func:`fastif_core.workspace.layout.two_way_aware_cross_entropy`)."""
    from fastif_core.modeling import classifier as M

    c = len(label_names)
    merged = [
        ex.label not in label_names and c == 3 and to_two_way(ex.label) == "non-entailment" for ex in records
    ]
    placeholder = [
        replace(ex, label=label_names[0]) if m else ex for ex, m in zip(records, merged, strict=True)
    ]
    encoded = M.encode(tokenizer, placeholder, label_names, max_length)
    for i, m in enumerate(merged):
        if m:
            encoded.labels[i] = c
    return encoded


def check_disjoint(data: LoopData) -> None:
    """The anchor pool never overlaps an evaluation part (the accuracy reported is on unseen examples)."""
    pool = {ex.id for ex in data.anchor_pool}
    for name, part in data.parts().items():
        if pool & {ex.id for ex in part}:
            raise ConfigError(f"evaluation part {name!r} overlaps the anchor pool")
