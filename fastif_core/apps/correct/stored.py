"""The store edge of correction runs: every stored run of a workspace, merged per comparison (the seeds
of one comparison run separately, :func:`fastif_core.apps.correct.summary.merge_runs`). Torch-free, so
``fastif corrections`` and the dashboard read it without loading a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastif_core.apps.correct.config import parse_slice, slice_text
from fastif_core.apps.correct.summary import merge_runs
from fastif_core.store import Store
from fastif_core.workspace import require_workspace


def stored_comparisons(root: str | Path, *, kind: str | None = None, target: str | None = None,
                       model_id: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Every stored run of the workspace, merged per comparison (:func:`.summary.merge_runs`)."""
    require_workspace(root)  # a mistyped path is one clear line, and no database is created
    want = None if target is None else slice_text(parse_slice(target))
    with Store.open(root) as store:
        rows = store.list_app_results("correction", model_id=model_id, kind=kind, limit=1_000_000)
    runs = [(r.id, r.result) for r in rows
            if want is None or slice_text(parse_slice(r.result["settings"]["slice"])) == want]  # fmt: skip
    return merge_runs(runs)
