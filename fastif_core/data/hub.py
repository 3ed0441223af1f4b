"""``hf:<dataset>[:<split>]`` sources through the ``datasets`` library: the hub (needs internet) or a local
directory written by ``save_to_disk`` (loaded with ``load_from_disk``, works offline).

Column conventions of ``glue/mnli``, ``multi_nli`` and ``hans`` are understood: ``premise``/``sentence1``,
``hypothesis``/``sentence2``, ``label``/``gold_label`` (integers mapped through the ``ClassLabel``
names; ``-1`` means no label and is skipped and counted), ``pairID``/``idx`` as ids, and
``genre``, ``heuristic``, ``subcase``, ``template`` as slices. ``<dataset>`` may carry a config as
``name@config``; ``glue/mnli`` is short for ``nyu-mll/glue@mnli``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastif_core.data.records import HANS_LABELS, MNLI_LABELS, clean_name
from fastif_core.data.rows import Collector, LoadResult, Schema, resolve_columns
from fastif_core.errors import ConfigError, DataFormatError

ALIASES: dict[str, tuple[str, str | None, str]] = {  # name → (hub repo, config, dataset name)
    "glue/mnli": ("nyu-mll/glue", "mnli", "mnli"),
    "mnli": ("nyu-mll/multi_nli", None, "mnli"),
    "multi_nli": ("nyu-mll/multi_nli", None, "mnli"),
    "hans": ("jhu-cogsci/hans", None, "hans"),
}
HF_SCHEMA = Schema(
    "hf",
    "hf",
    ("premise", "sentence1"),
    ("hypothesis", "sentence2"),
    ("label", "gold_label"),
    MNLI_LABELS + HANS_LABELS[1:],
)


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"glue/mnli:validation_matched"`` → ``("glue/mnli", "validation_matched")``; no split → None."""
    name, sep, split = spec.rpartition(":")
    if not sep or not name or not split or "/" in split:
        return spec, None
    return name, split


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as exc:
        raise ConfigError("hf: sources need the 'datasets' package: pip install 'fastif[hub]'") from exc
    return datasets


def _pick_split(obj: Any, split: str | None, where: str) -> tuple[Any, str]:
    """One split of a loaded ``DatasetDict`` (or the ``Dataset`` itself) and its name."""
    if not hasattr(obj, "keys"):
        return obj, split or (str(obj.split) if getattr(obj, "split", None) else "train")
    names = list(obj.keys())
    if split is None:
        if "train" in names or len(names) == 1:
            split = "train" if "train" in names else names[0]
        else:
            raise DataFormatError(f"{where}: has splits {', '.join(names)}; choose one as {where}:<split>")
    if split not in names:
        raise DataFormatError(f"{where}: no split {split!r}; available splits: {', '.join(names)}")
    return obj[split], split


def _hub_dataset(name: str, split: str | None, where: str) -> tuple[Any, str, str]:
    repo, config, short = ALIASES.get(name, (*name.partition("@")[::2], ""))
    short = short or clean_name(repo.rsplit("/", 1)[-1])
    try:
        ds = _datasets().load_dataset(repo, config or None, split=split or "train")
    except Exception as exc:  # network, unknown name, missing split: one actionable line
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise DataFormatError(
            f"{where}: could not load {repo!r} (config {config!r}, split {split or 'train'!r}) with "
            f"datasets.load_dataset: {type(exc).__name__}: {first}. Offline, save the dataset with "
            f"save_to_disk and pass hf:<directory>"
        ) from exc
    return ds, split or "train", short


def _label_names(ds: Any, column: str, where: str) -> list[str] | None:
    """The ``ClassLabel`` names of the label column, None for string labels; raises for bare integers."""
    feature = ds.features[column]
    if hasattr(feature, "names"):
        return [str(n).lower() for n in feature.names]
    if getattr(feature, "dtype", "string") in ("string", "large_string"):
        return None
    raise DataFormatError(
        f"{where}: column {column!r} holds {feature.dtype} values without ClassLabel names; cast it with "
        f"ds.cast_column({column!r}, ClassLabel(names=['entailment', 'neutral', 'contradiction']))"
    )


def _text_row(row: dict[str, Any], label_col: str, names: list[str] | None, where: str) -> dict[str, str]:
    out = {k: "" if v is None else str(v) for k, v in row.items()}
    if names is not None:
        value = row[label_col]
        if value is None or value < 0:
            out[label_col] = "-"
        elif value >= len(names):
            raise DataFormatError(f"{where}: label {value} is out of range for ClassLabel names {names}")
        else:
            out[label_col] = names[value]
    return out


def load_hf(
    spec: str, *, dataset: str | None = None, split: str | None = None, limit: int | None = None
) -> LoadResult:
    """Load ``hf:<spec>`` (``spec`` = ``name[@config][:split]`` or a ``save_to_disk`` directory)."""
    name, spec_split = split_spec(spec)
    where, split = f"hf:{spec}", split or spec_split
    local = Path(name).expanduser()
    if local.is_dir():
        ds, split = _pick_split(_datasets().load_from_disk(str(local)), split, f"hf:{name}")
        short = clean_name(local.name)
    else:
        ds, split, short = _hub_dataset(name, split, where)
    cols = resolve_columns(HF_SCHEMA, list(ds.column_names), where)
    names = _label_names(ds, cols["label"], where)
    out = Collector(
        clean_name(dataset or short), clean_name(split), HF_SCHEMA.labels, lambda i: f"{where} row {i}", limit
    )
    for i, row in enumerate(ds):
        if out.full:
            break
        out.add(_text_row(row, cols["label"], names, f"{where} row {i}"), cols, i, i)
    return LoadResult(out.examples, out.skipped, "hf", where)
