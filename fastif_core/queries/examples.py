"""Which test examples a question is about: :func:`list_examples` (the JSON of ``fastif examples``),
:func:`select_examples` (ids from a list, a file or the browse filters) and :func:`require_example`
(an id checked to be in the workspace, before any work)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastif_core.errors import ConfigError, DataFormatError, WorkspaceError
from fastif_core.jobs import unique_ids
from fastif_core.workspace.layout import require_prepared


def open_store(root: str | Path) -> tuple[Any, dict[str, Any]]:
    """``(Store, manifest)`` of a prepared workspace (WorkspaceError when it is not prepared)."""
    from fastif_core.store import Store

    manifest = require_prepared(root)
    return Store.open(root), manifest


def require_example(store: Any, example_id: str, model_id: int) -> Any:
    """The example (with ``model_id``'s prediction), or a WorkspaceError saying how to find valid ids."""
    ex = store.get_example(example_id, model_id)
    if ex is None or not ex.in_workspace:
        why = "is not in this workspace" if ex is None else "belongs to a source this workspace no longer has"
        raise WorkspaceError(f"example {example_id!r} {why} (list ids with `fastif examples`)")
    return ex


def list_examples(
    root: str | Path,
    *,
    dataset: str | None = None,
    split: str | None = None,
    incorrect: bool = False,
    limit: int = 20,
) -> list[dict[str, Any]]:
    """Examples with label, prediction and slice fields (the JSON of ``fastif examples``)."""
    store, manifest = open_store(root)
    try:
        filters: dict[str, Any] = {"model_id": int(manifest["model_id"])}
        for key, value in (("dataset", dataset), ("split", split)):
            if value is not None:
                filters[key] = value
        if incorrect:
            filters["correct"] = False
        rows = store.query_examples(limit=limit, **filters)
    finally:
        store.close()
    return [
        {
            "id": r.id,
            "dataset": r.dataset,
            "split": r.split,
            "label": r.label,
            "predicted": r.predicted,
            "correct": r.correct,
            "confidence": r.confidence,
            "premise": r.premise,
            "hypothesis": r.hypothesis,
            **r.slices,
        }
        for r in rows
    ]


def select_examples(
    root: str | Path,
    *,
    ids: str | None = None,
    ids_file: str | Path | None = None,
    dataset: str | None = None,
    split: str | None = None,
    incorrect: bool = False,
    limit: int = 20,
) -> list[str]:
    """Example ids from ``ids`` ("a,b,c"), a file (one id per line, ``#`` comments) or the browse filters."""
    if ids is not None:
        return unique_ids(ids.split(","))
    if ids_file is not None:
        path = Path(ids_file)
        if not path.is_file():
            raise DataFormatError(f"{path}: no such file (--examples-from wants one example id per line)")
        lines = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
        return unique_ids([ln for ln in lines if ln])
    rows = list_examples(root, dataset=dataset, split=split, incorrect=incorrect, limit=limit)
    if not rows:
        raise ConfigError("examples: no example matches these filters (see `fastif examples`)")
    return [r["id"] for r in rows]
