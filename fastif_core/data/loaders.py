"""Load NLI examples from ``demo``, a data file (format detected from the file itself) or ``hf:...``.

File formats (UTF-8, tab-separated ones read without quoting, i.e. ``csv.QUOTE_NONE`` semantics):

- ``mnli_jsonl``: MNLI release JSON lines (``gold_label``, ``sentence1``, ``sentence2``, ``pairID``, ``genre``).
- ``glue_tsv``: GLUE ``MNLI/*.tsv``, a header with ``sentence1``, ``sentence2``, ``gold_label`` (or ``label``).
- ``mnli_dev_tsv``: a header with ``premise``, ``hypothesis``, ``gold_label`` (the shared dev file, whose
  ``number of correct responses (out of 100)`` column is kept in ``extra``).
- ``nli_triples_tsv``: headerless ``premise``, ``hypothesis``, ``gold_label`` (``contradicting_examples.tsv``).
- ``hans``: HANS ``heuristics_*_set.txt`` (2-way labels; ``heuristic``/``subcase``/``template`` become slices).

Rows whose label is ``-`` (no annotator consensus) are skipped and counted. Parse columns are dropped;
other unused columns are kept in ``extra``. Every problem raises :class:`DataFormatError` naming the
file, the line and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastif_core.data.hans import HANS_COLUMNS
from fastif_core.data.records import HANS_LABELS, MNLI_LABELS, NO_CONSENSUS, clean_name, make_id
from fastif_core.data.rows import Collector, LoadResult, Schema, resolve_columns
from fastif_core.errors import ConfigError, DataFormatError

DIFFICULTY_COLUMN = "number of correct responses (out of 100)"
SOURCE_HELP = "a source is 'demo', 'demo:<split>', a file path, or 'hf:<dataset>[:<split>]'"


SCHEMAS = {
    "mnli_jsonl": Schema("mnli_jsonl", "mnli", ("sentence1",), ("sentence2",), ("gold_label",), MNLI_LABELS),
    "glue_tsv": Schema(
        "glue_tsv", "mnli", ("sentence1",), ("sentence2",), ("gold_label", "label"), MNLI_LABELS
    ),
    "mnli_dev_tsv": Schema(
        "mnli_dev_tsv", "mnli", ("premise",), ("hypothesis",), ("gold_label", "label"), MNLI_LABELS
    ),
    "nli_triples_tsv": Schema(
        "nli_triples_tsv", "mnli", ("premise",), ("hypothesis",), ("gold_label",), MNLI_LABELS
    ),
    "hans": Schema(
        "hans",
        "hans",
        ("sentence1",),
        ("sentence2",),
        ("gold_label",),
        HANS_LABELS,
        ("heuristic", "subcase", "template"),
    ),
}
_TRIPLE_NAMES = ["premise", "hypothesis", "gold_label"]
_KNOWN_COLUMNS = {c for s in SCHEMAS.values() for c in (*s.premise, *s.hypothesis, *s.label)} | set(
    HANS_COLUMNS
)


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of the non-blank lines; raises naming the line if the file is not UTF-8."""
    offset = 0
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            if number == 1 and raw[:2] == b"\x1f\x8b":
                raise DataFormatError(f"{path}:1: a gzip-compressed file: decompress it first (gunzip)")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad = raw[exc.start]
                raise DataFormatError(
                    f"{path}:{number}: not UTF-8 text (byte 0x{bad:02x} at byte offset {offset + exc.start} "
                    f"of the file); re-save the file as UTF-8"
                ) from None
            offset += len(raw)
            text = (text.removeprefix("\ufeff") if number == 1 else text).rstrip("\r\n")
            if text.strip():
                yield number, text


def detect_format(path: Path, first_line: str) -> tuple[str, bool]:
    """The format of a file from its extension and first line, and whether that line is a header."""
    if path.suffix.lower() in (".jsonl", ".json") or first_line.lstrip().startswith("{"):
        return "mnli_jsonl", False
    fields = first_line.split("\t")
    names = set(fields)
    if names & _KNOWN_COLUMNS:
        if names & {"heuristic", "subcase", "template"}:
            return "hans", True
        return ("mnli_dev_tsv" if names & {"premise", "hypothesis"} else "glue_tsv"), True
    if len(fields) == 3 and fields[2].strip().lower() in (*MNLI_LABELS, NO_CONSENSUS):
        return "nli_triples_tsv", False
    shown = ", ".join(repr(f[:30]) for f in fields[:6])
    raise DataFormatError(
        f"{path}:1: unrecognised format: the first line has {len(fields)} tab-separated field(s) ({shown}); "
        f"expected JSON lines, a header naming sentence1/sentence2/gold_label or premise/hypothesis/gold_label, "
        f"or headerless premise<TAB>hypothesis<TAB>label rows"
    )


def default_split(path: Path) -> str:
    """A split name from the file name: ``multinli_1.0_dev_matched.jsonl`` → ``dev_matched``."""
    stem = path.stem
    for prefix in ("multinli_1.0_", "multinli_", "mnli_", "heuristics_"):
        stem = stem.removeprefix(prefix)
    return clean_name(stem.removesuffix("_set"))


def _read_tsv(
    path: Path,
    lines: Iterator[tuple[int, str]],
    names: list[str],
    cols: dict[str, str | None],
    out: Collector,
) -> int:
    """Feed TSV rows to ``out``; returns how many data rows were read."""
    rows = 0
    for rownum, (number, line) in enumerate(lines):
        rows += 1
        fields = line.split("\t")
        while len(fields) > len(names) and not fields[-1].strip():
            fields.pop()  # trailing empty fields
        if len(fields) != len(names):
            hint = "" if len(fields) < len(names) else " (a tab inside a text? this format has no quoting)"
            raise DataFormatError(
                f"{path}:{number}: row has {len(fields)} tab-separated field(s), expected {len(names)} "
                f"({', '.join(names)}){hint}"
            )
        out.add(dict(zip(names, fields, strict=True)), cols, number, rownum)
        if out.full:
            break
    return rows


def _json_text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def _read_jsonl(path: Path, lines: Iterator[tuple[int, str]], schema: Schema, out: Collector) -> int:
    """Feed JSON-lines rows to ``out`` (columns are resolved per row); returns how many rows were read."""
    rows = 0
    for rownum, (number, line) in enumerate(lines):
        rows += 1
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}:{number}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise DataFormatError(f"{path}:{number}: expected a JSON object, found {type(obj).__name__}")
        row = {str(k): _json_text(v) for k, v in obj.items()}
        out.add(row, resolve_columns(schema, list(row), f"{path}:{number}"), number, rownum)
        if out.full:
            break
    return rows


def load_file(
    path: str | Path, *, dataset: str | None = None, split: str | None = None, limit: int | None = None
) -> LoadResult:
    """Load one data file, its format detected from the file itself (see the module docstring)."""
    path = Path(path)
    lines = read_lines(path)
    first = next(lines, None)
    if first is None:
        raise DataFormatError(f"{path}:1: empty file (no lines with text)")
    fmt, has_header = detect_format(path, first[1])
    schema = SCHEMAS[fmt]
    out = Collector(
        clean_name(dataset or schema.dataset),
        clean_name(split or default_split(path)),
        schema.labels,
        lambda n: f"{path}:{n}",
        limit,
    )
    if fmt == "mnli_jsonl":
        rows = _read_jsonl(path, _chain(first, lines), schema, out)
    else:
        names = first[1].split("\t") if has_header else _TRIPLE_NAMES
        cols = resolve_columns(schema, names, f"{path}:{first[0]}")
        rows = _read_tsv(path, lines if has_header else _chain(first, lines), names, cols, out)
    if rows == 0 and limit != 0:
        raise DataFormatError(f"{path}:{first[0] + 1}: no data rows after the header")
    return LoadResult(out.examples, out.skipped, fmt, str(path))


def _chain(first: tuple[int, str], rest: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    yield first
    yield from rest


def _load_demo(
    source: str, dataset: str | None, split: str | None, limit: int | None, seed: int
) -> LoadResult:
    from fastif_core.data.demo import DEFAULTS, demo_split

    name = split or source.partition(":")[2] or "train"
    if name == "challenge":
        per_subcase = (
            DEFAULTS["per_subcase"] if limit is None else max(DEFAULTS["per_subcase"], -(-limit // 30))
        )
        examples = demo_split(name, seed, per_subcase)[:limit]
    else:
        examples = demo_split(name, seed, limit)
    if dataset:
        examples = [
            replace(e, dataset=clean_name(dataset), id=make_id(clean_name(dataset), e.split, e.key))
            for e in examples
        ]
    return LoadResult(examples, 0, "demo", f"demo:{name}")


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists())


def source_fingerprint(source: str | None) -> str:
    """What a source is now: ``demo``/``hf:`` names as they are; a file's sha256; a directory's (a saved
    dataset, a checkpoint) relative paths, sizes and modification times. Equal fingerprints = same data."""
    if source is None or source == "demo" or source.startswith(("demo:", "hf:")):
        return str(source)
    path = Path(source).expanduser()
    digest = hashlib.sha256()
    if path.is_file():
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    elif path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            stat = child.stat()
            digest.update(f"{child.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    else:
        return f"missing:{source}"
    return digest.hexdigest()


def load_source(
    source: str,
    *,
    dataset: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> LoadResult:
    """Load ``source``: ``demo`` / ``demo:<split>`` (built-in corpus, ``seed``), a file, or ``hf:<name>[:<split>]``.

    ``dataset`` and ``split`` override the names used in ids (defaults come from the file name);
    ``limit`` keeps the first ``limit`` examples (rows skipped for no consensus do not count).
    """
    if limit is not None and limit < 0:
        raise ConfigError(f"limit={limit!r} is invalid: allowed None or >= 0")
    if source == "demo" or source.startswith("demo:"):
        return _load_demo(source, dataset, split, limit, seed)
    if source.startswith("hf:"):
        from fastif_core.data.hub import load_hf

        return load_hf(source[3:], dataset=dataset, split=split, limit=limit)
    path = Path(source).expanduser()
    if is_saved_dataset(path):
        from fastif_core.data.hub import load_hf

        return load_hf(str(path), dataset=dataset, split=split, limit=limit)
    if path.is_dir():
        raise DataFormatError(f"{path}: is a directory, not a data file ({SOURCE_HELP})")
    if not path.exists():
        raise DataFormatError(f"{source}: no such file ({SOURCE_HELP})")
    return load_file(path, dataset=dataset, split=split, limit=limit)
