"""Rows to records, shared by the file loaders (:mod:`fastif_core.data.loaders`) and the hub loader
(:mod:`fastif_core.data.hub`): a format's column schema, column resolution, and the :class:`Collector`
that turns rows (column → text) into :class:`~fastif_core.data.records.NLIExample` records with checked
labels and stable unique ids; :class:`LoadResult` is what a loader returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fastif_core.data.records import NO_CONSENSUS, SLICE_KEYS, NLIExample, make_id
from fastif_core.errors import DataFormatError

KEY_COLUMNS = ("pairID", "index", "idx", "id")


@dataclass
class LoadResult:
    """What :func:`load_source` read: the examples, rows skipped for lack of a consensus label, the
    detected format and the path (or source string) they came from."""

    examples: list[NLIExample]
    skipped_no_consensus: int
    format: str
    path: str


@dataclass(frozen=True)
class Schema:
    """Column names of one format: alternatives for each role, allowed labels, other required columns."""

    format: str
    dataset: str  # default dataset name
    premise: tuple[str, ...]
    hypothesis: tuple[str, ...]
    label: tuple[str, ...]
    labels: tuple[str, ...]
    required: tuple[str, ...] = ()


def resolve_columns(schema: Schema, names: list[str], where: str) -> dict[str, str | None]:
    """Map roles (premise, hypothesis, label, key) to column names, or raise naming what is missing."""
    cols: dict[str, str | None] = {}
    wanted = [("premise", schema.premise), ("hypothesis", schema.hypothesis), ("label", schema.label)]
    for role, options in [*wanted, *((r, (r,)) for r in schema.required)]:
        found = next((o for o in options if o in names), None)
        if found is None:
            alt = "".join(f" (or {o!r})" for o in options[1:])
            found_cols = ", ".join(shorten(n, 30) for n in names[:12]) + (" ..." if len(names) > 12 else "")
            raise DataFormatError(f"{where}: missing column {options[0]!r}{alt}; found columns: {found_cols}")
        cols[role] = found
    cols["key"] = next((k for k in KEY_COLUMNS if k in names), None)
    return cols


@dataclass
class Collector:
    """Turns rows (column → text) into examples: label check, stable unique ids, slices and extra."""

    dataset: str
    split: str
    labels: tuple[str, ...]
    where: Callable[[int], str]  # line or row number → "file:line" for messages
    limit: int | None = None
    examples: list[NLIExample] = field(default_factory=list)
    skipped: int = 0
    first_seen: dict[str, int] = field(default_factory=dict)

    @property
    def full(self) -> bool:
        return self.limit is not None and len(self.examples) >= self.limit

    def add(self, row: dict[str, str], cols: dict[str, str | None], line: int, rownum: int) -> None:
        """Add one row (``rownum`` is its 0-based data row number, the id when there is no id column)."""
        raw = row[cols["label"]]
        label = raw.strip().lower()
        if label == NO_CONSENSUS:
            self.skipped += 1
            return
        if label not in self.labels:
            allowed = ", ".join(self.labels)
            raise DataFormatError(
                f"{self.where(line)}: unknown label {shorten(raw)!r} in column {cols['label']!r}: allowed {allowed} "
                f"(or '-' for no consensus, skipped)"
            )
        key = (row.get(cols["key"]) or "").strip() if cols["key"] else ""
        ex_id = make_id(self.dataset, self.split, key or rownum)
        if ex_id in self.first_seen:
            raise DataFormatError(
                f"{self.where(line)}: duplicate id {shorten(key)!r} in column {cols['key']!r} "
                f"(first at {self.where(self.first_seen[ex_id])}); ids must be unique"
            )
        self.first_seen[ex_id] = line
        self.examples.append(self._example(ex_id, label, row, cols))

    def _example(
        self, ex_id: str, label: str, row: dict[str, str], cols: dict[str, str | None]
    ) -> NLIExample:
        used = {cols["premise"], cols["hypothesis"], cols["label"], cols["key"]}
        slices = {k: row[k].strip() for k in SLICE_KEYS if (row.get(k) or "").strip()}
        extra = {k: v for k, v in row.items() if k not in used and k not in SLICE_KEYS and "parse" not in k}
        return NLIExample(
            id=ex_id,
            premise=row[cols["premise"]].strip(),
            hypothesis=row[cols["hypothesis"]].strip(),
            label=label,
            dataset=self.dataset,
            split=self.split,
            slices=slices,
            extra=extra,
        )


def shorten(text: str, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters for an error message (a label column may hold a whole line)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
