"""Pure helpers that turn store records into what the pages show: tables, text, export files.

No Streamlit and no queries here, so every function is testable on its own.
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime
from typing import Any

import pandas as pd

from fastif_core.store.records import ExampleRow, InfluenceRunInfo, JobInfo, NeighborInfo, ScoreInfo

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|$~:])")
EXAMPLE_COLUMNS = [
    "id",
    "label",
    "predicted",
    "correct",
    "confidence",
    "premise",
    "hypothesis",
    "dataset",
    "split",
    "genre",
    "heuristic",
    "subcase",
]


def md_escape(text: str) -> str:
    """Text shown through st.markdown exactly as written (no bold, links, LaTeX or colour tags)."""
    return _MD_SPECIAL.sub(r"\\\1", text)


def code(text: str) -> str:
    """Text as a Markdown code span (shown verbatim; backticks inside are replaced)."""
    return "`" + text.replace("`", "'") + "`"


def pretty(name: str | None) -> str:
    """A slice value or kind for display: ``lexical_overlap`` -> ``lexical overlap``; None -> "—"."""
    return name.replace("_", " ") if name else "—"


def seconds(value: float | None) -> str:
    """A duration for humans: "0.42 s", "12.3 s", "3 min 05 s"; "—" when unknown."""
    if value is None:
        return "—"
    if value < 10:
        return f"{value:.2f} s"
    if value < 60:
        return f"{value:.1f} s"
    minutes, rest = divmod(int(round(value)), 60)
    return f"{minutes} min {rest:02d} s"


def when(ts: datetime | None) -> str:
    """A timestamp as "2026-11-28 15:20:03 UTC" ("—" when missing)."""
    return ts.strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "—"


def error_summary(error: str | None) -> str:
    """One line for a job's error: the message itself, or a traceback's last line."""
    lines = [line.strip() for line in (error or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no error message was recorded"


def examples_frame(rows: list[ExampleRow]) -> pd.DataFrame:
    """The browse table: one row per example, slice fields as columns, no nested values."""
    records = [
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
            "genre": r.genre,
            "heuristic": pretty(r.heuristic) if r.heuristic else None,
            "subcase": pretty(r.subcase) if r.subcase else None,
        }
        for r in rows
    ]
    frame = pd.DataFrame.from_records(records, columns=EXAMPLE_COLUMNS)
    return frame.dropna(axis="columns", how="all") if len(frame) else frame


def neighbors_frame(neighbors: list[NeighborInfo]) -> pd.DataFrame:
    """The nearest-neighbour table: rank (1 = nearest), distance, label, text."""
    records = [
        {
            "rank": n.rank + 1,
            "distance": n.distance,
            "label": n.label,
            "premise": n.premise,
            "hypothesis": n.hypothesis,
            "id": n.train_id,
        }
        for n in neighbors
    ]
    return pd.DataFrame.from_records(
        records, columns=["rank", "distance", "label", "premise", "hypothesis", "id"]
    )


def jobs_frame(jobs: list[JobInfo]) -> pd.DataFrame:
    """The jobs table: what, state, how far, where, how long, why it failed."""
    records = [
        {
            "id": j.id,
            "kind": j.kind,
            "subject": job_subject(j),
            "status": j.status,
            "progress": j.progress,
            "message": j.message or "",
            "device": j.device or "—",
            "duration": seconds(j.duration_s),
            "attempts": f"{j.attempts}/{j.max_attempts}",
            "created": when(j.created_at),
            "error": j.error or "",
        }
        for j in jobs
    ]
    cols = [
        "id",
        "kind",
        "subject",
        "status",
        "progress",
        "message",
        "device",
        "duration",
        "attempts",
        "created",
        "error",
    ]
    return pd.DataFrame.from_records(records, columns=cols)


def job_subject(job: JobInfo) -> str:
    """One line saying what a job works on (its example, its training source, ...)."""
    p = job.params
    if "example_id" in p:
        return f"example {p['example_id']}"
    if "train" in p:
        return f"prepare from {p['train']}"
    return ", ".join(f"{k}={v}" for k, v in sorted(p.items()) if isinstance(v, str | int | float))[:80]


def config_lines(config: dict[str, Any]) -> str:
    """An influence config in one human line: "k=1000 · cg (gauss_newton) · J=50 · B=32 · T=1 · μ=50"."""
    s = config.get("s_test", {})
    if config.get("method") == "sketch":  # gradient sketches over all N (issue 27)
        q = config.get("sketch_query", {})
        dim = q.get("sketch", {}).get("dim")
        return f"sketch over all training examples · {q.get('curvature')} · d≈{dim} · μ={s.get('mu', 0):g}"
    k = "full" if config.get("k") is None else f"k={config['k']}"
    if config.get("method") == "rerank":
        k = f"exact re-rank of the sketch's top {config.get('rerank')} and k={config['k']}"
    solver = f"{s.get('solver', 'lissa')} ({s.get('curvature', 'hessian')})"
    parts = [k, solver, f"J={s.get('depth')}", f"B={s.get('batch_size')}", f"T={s.get('repeats')}"]
    if s.get("mu"):
        parts.append(f"μ={s['mu']:g}")
    else:
        parts += [f"damping={s.get('damping', 0):g}", f"scale={s.get('scale', 0):g}"]
    if config.get("gradient_l2", "none") != "none":
        parts.append(f"L2 in gradients: {config['gradient_l2']}")
    return " · ".join(parts)


def influence_rows(
    run: InfluenceRunInfo, neighbor_ids: set[str], top: int | None = None
) -> list[dict[str, Any]]:
    """Helpful then harmful scores as flat rows (the export format and the lists' content)."""
    rows = []
    for kind, scores in (("helpful", run.helpful(top)), ("harmful", run.harmful(top))):
        rows += [_score_row(kind, i, s, neighbor_ids) for i, s in enumerate(scores, start=1)]
    return rows


def _score_row(kind: str, position: int, s: ScoreInfo, neighbor_ids: set[str]) -> dict[str, Any]:
    return {
        "direction": kind,
        "position": position,
        "train_id": s.train_id,
        "influence": s.value,
        "label": s.label,
        "nearest_neighbor": s.train_id in neighbor_ids,
        "premise": s.premise,
        "hypothesis": s.hypothesis,
    }


def export_csv(run: InfluenceRunInfo, neighbor_ids: set[str], top: int | None = None) -> str:
    """The shown influence results as CSV; the config that made them in '#' header lines."""
    buf = io.StringIO()
    buf.write(f"# fastif influence for example {run.example_id} (model {run.model_id}, run {run.id})\n")
    buf.write(f"# config: {json.dumps(run.config, sort_keys=True)}\n")
    rows = influence_rows(run, neighbor_ids, top)
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["direction"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def export_json(run: InfluenceRunInfo, neighbor_ids: set[str], top: int | None = None) -> str:
    """The shown influence results as JSON, with the config, its hash, timings and candidate count."""
    rows = influence_rows(run, neighbor_ids, top)
    payload = {
        "example_id": run.example_id,
        "model_id": run.model_id,
        "run_id": run.id,
        "config": run.config,
        "top": top,
        "config_hash": run.config_hash,
        "num_candidates": run.num_candidates,
        "seconds": run.timings,
        "created_at": when(run.created_at),
        "helpful": [r for r in rows if r["direction"] == "helpful"],
        "harmful": [r for r in rows if r["direction"] == "harmful"],
    }
    return json.dumps(payload, indent=2, sort_keys=False)
