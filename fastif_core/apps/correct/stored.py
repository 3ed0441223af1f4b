"""The store edge of correction runs: every stored run of a workspace, merged per comparison (the seeds
of one comparison run separately, :func:`fastif_core.apps.correct.summary.merge_runs`), and runs made in
another workspace (another machine or day) imported from the JSON ``fastif correct --json`` printed.
Torch-free, so ``fastif corrections`` and the dashboard read it without loading a model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastif_core.apps.correct.config import CorrectConfig, parse_slice, slice_text
from fastif_core.apps.correct.summary import merge_runs
from fastif_core.errors import DataFormatError, FastifError
from fastif_core.store import Store
from fastif_core.workspace.layout import require_workspace

APP = "correction"
# what a run's JSON must hold to be stored (``fastif correct --json`` prints these and run_id/cached/saved)
RUN_FIELDS = ("settings", "model_id", "model_hash", "kind", "before", "methods", "seconds", "sizes")
NOT_STORED = ("run_id", "cached", "saved", "saved_model_id")


def stored_comparisons(
    root: str | Path, *, kind: str | None = None, target: str | None = None, model_id: int | None = None
) -> list[dict[str, Any]]:
    """Every stored run of the workspace, merged per comparison (:func:`.summary.merge_runs`)."""
    require_workspace(root)  # a mistyped path is one clear line, and no database is created
    want = None if target is None else slice_text(parse_slice(target))
    with Store.open(root) as store:
        rows = store.list_app_results(APP, model_id=model_id, kind=kind, limit=1_000_000)
    runs = [
        (r.id, r.result)
        for r in rows
        if want is None or slice_text(parse_slice(r.result["settings"]["slice"])) == want
    ]
    return merge_runs(runs)


def import_runs(root: str | Path, paths: list[str | Path]) -> list[dict[str, Any]]:
    """Store the runs in ``paths`` (each the JSON of one ``fastif correct --json``, made in any workspace)
    under this workspace's model with the same ``model_hash``; a run already stored is kept as it is.

    Every file is checked before anything is written (one clear error naming the file and field), so a
    bad file stores nothing. Returns per file ``{"file", "run_id", "imported"}`` (False: already stored).
    """
    require_workspace(root)
    with Store.open(root) as store:
        models = {m.config_hash: m.id for m in store.list_models()}
        checked = [_checked_run(Path(p), models) for p in paths]
        out = []
        for path, cfg, model_id, result in checked:
            known = store.find_app_result(APP, cfg.result_key(), model_id=model_id, kind=cfg.kind)
            info = known or store.save_app_result(
                APP,
                replace(cfg, save=None),
                result,
                model_id=model_id,
                kind=cfg.kind,
                config_hash=cfg.result_key(),
            )
            out.append({"file": str(path), "run_id": info.id, "imported": known is None})
    return out


def _checked_run(path: Path, models: dict[str, int]) -> tuple[Path, CorrectConfig, int, dict[str, Any]]:
    """``path``'s run, its settings and the local model it belongs to; DataFormatError if it is not one."""
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise DataFormatError(f"{path}: cannot read the run ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataFormatError(
            f"{path}: not a correction run: expected the JSON object `fastif correct --json` prints"
        )
    missing = [f for f in RUN_FIELDS if f not in data]
    if missing:
        raise DataFormatError(
            f"{path}: field {missing[0]!r} is missing: a run made by `fastif correct --json` "
            f"holds {', '.join(RUN_FIELDS)}"
        )
    try:
        cfg = CorrectConfig.from_json_dict(data["settings"]).validate()
    except (FastifError, TypeError, ValueError, KeyError) as e:
        raise DataFormatError(f"{path}: field 'settings' is not a correction's settings ({e})") from None
    if data["kind"] != cfg.kind:
        raise DataFormatError(
            f"{path}: field 'kind' is {data['kind']!r} but its settings make a {cfg.kind!r} run"
        )
    if data["model_hash"] not in models:
        raise DataFormatError(
            f"{path}: field 'model_hash' {str(data['model_hash'])[:12]}… names no model of this "
            "workspace: import into a workspace prepared with the same model, settings and data"
        )
    result = {k: v for k, v in data.items() if k not in NOT_STORED}
    model_id = models[data["model_hash"]]
    return path, cfg, model_id, {**result, "model_id": model_id}
