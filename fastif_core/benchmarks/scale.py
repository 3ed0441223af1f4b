"""``fastif bench --section scale`` (issue 29): what each page and query costs on a prepared workspace.

Parts (``--scale-parts``; each is stored in ``OUT/scale.json`` as soon as it ends, with a fingerprint of
the workspace build and its own options, and skipped by a later run with the same fingerprint unless
``--scale-fresh``): every part records ``seconds`` and the peak RSS while it ran (``peak_rss_mb``,
``peak_growth_mb``); every timing is a spread (median, quartiles) over ``--scale-repeats`` runs.

- ``faiss``: Flat and IVF (``IVF<nlist>,Flat``) built over the workspace's training features: build
  seconds, index size, query ms per held-out query at k, and per ``nprobe`` IVF's recall@k against Flat
  (a neighbour counts when it is one of Flat's or no farther than Flat's k-th: ties are not misses).
- ``neighbours``: prepare's neighbours phase again through the index ``--scale-neighbors-index`` picks
  at this N (``auto``: an IVF from 100,000 training examples on): build and search seconds, and the
  recall of its lists against the stored ones when those came from exact search.
- ``browse``: the Browse page's store queries (``app/data_access``): the filter options, the first page
  and the counts under several filters (none, training set, incorrect, one label, a text search), the
  accuracy per slice column, and pages of ``--scale-page-size`` rows at ``--scale-offsets``.
- ``example``: the Example page's queries (the example, its stored neighbours, its stored runs).
- ``click``: the kNN search and one exact click (test gradient, s_test, scoring) at ``--scale-click-k``
  on ``--scale-click-examples`` held-out examples, computed fresh (nothing stored).
- ``sketch``: the sketch click over all N (one product) when the default sketch index is complete.
- ``graph``: the graph of the Graphs page (test set by slices, ``--scale-graph-per-slice`` each, at
  ``--scale-graph-k``): its influence matrix (stored in the workspace like ``fastif graph``'s, so a
  second run reads it back: ``influence.cached``), the edges and layout, node and edge counts.
- ``import``: prepare's import phase again, timed alone: the build read back from the workspace's store
  (examples, training order, predictions, neighbour lists) and published into an empty database, the
  ``--scale-db-url`` scratch server (e.g. PostgreSQL) or a temporary SQLite file; its size on disk.
- ``jobs``: ``--scale-jobs`` real influence jobs enqueued through the job API into a COPY of the
  workspace's SQLite database (never the original) or into the ``--scale-db-url`` scratch database, then
  the Jobs page's listings and the Example page's job look-up.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from fastif_core.benchmarks.common import spread, timed
from fastif_core.benchmarks.scale_store import (
    BROWSE_PAGE,
    browse_part,
    example_part,
    import_part,
    jobs_part,
    repeat,
)
from fastif_core.config import InfluenceConfig, STestConfig, config_hash
from fastif_core.measure import PhaseClock
from fastif_core.progress import Progress, ignore

PARTS = ("faiss", "neighbours", "browse", "example", "click", "sketch", "graph", "import", "jobs")


@dataclass(frozen=True)
class ScaleOptions:
    """The options of ``--section scale`` (each part's fingerprint holds the ones it uses)."""

    parts: tuple[str, ...] = PARTS
    repeats: int = 3
    fresh: bool = False
    knn_k: int = 100
    queries: int = 1000
    nlist: int = 0  # 0: about 4·√N cells, at least 39 training vectors each
    nprobes: tuple[int, ...] = (1, 8, 32)
    page_size: int = BROWSE_PAGE
    offsets: tuple[int, ...] = ()  # empty: 0, 2000, the middle and the last page
    search: str = "the"
    click_k: int = 1000
    click_examples: int = 3
    graph_per_slice: int = 100
    graph_k: int = 1000
    graph_preset: str = "default"
    graph_slice_by: str = "auto"
    graph_incorrect_only: bool = True
    jobs: int = 5000
    db_url: str = ""  # a scratch server database for the import and jobs parts ("" = temporary SQLite)
    neighbors_index: str = "auto"  # the neighbours part's index choice (PrepareConfig.neighbors_index)
    seed: int = 0


# ------------------------------------------------------------------------------------------------- faiss
def recall_at_k(dist: np.ndarray, pos: np.ndarray, ref_dist: np.ndarray, ref_pos: np.ndarray) -> float:
    """Mean share of the reference's k neighbours found, each query's ties at the k-th distance allowed."""
    k, hits = ref_pos.shape[1], []
    for d, p, rd, rp in zip(dist, pos, ref_dist, ref_pos, strict=True):
        limit = rd[-1] * (1 + 1e-5) + 1e-6
        hits.append(sum(1 for x, y in zip(d, p, strict=True) if y in set(rp.tolist()) or x <= limit) / k)
    return float(np.mean(hits))


def faiss_part(features: np.ndarray, num_train: int, o: ScaleOptions) -> dict[str, Any]:
    """Flat against IVF on the training rows of ``features`` (N + held-out, d), queried by held-out rows."""
    from fastif_core.config import KnnConfig
    from fastif_core.modeling.knn import KnnIndex, auto_nlist

    train = np.ascontiguousarray(features[:num_train], dtype=np.float32)  # (N, d)
    held = features[num_train:]
    queries = np.ascontiguousarray((held if len(held) else train)[: o.queries], dtype=np.float32)  # (Q, d)
    k, nlist = min(o.knn_k, num_train), o.nlist or auto_nlist(num_train)
    flat, flat_build = repeat(lambda: KnnIndex.build(train, KnnConfig(index="Flat")), o.repeats)
    (ref_d, ref_p), flat_query = repeat(lambda: flat.search(queries, k), o.repeats)
    factory = f"IVF{nlist},Flat"
    ivf, ivf_build = repeat(lambda: KnnIndex.build(train, KnnConfig(index=factory, nprobe=1)), o.repeats)
    probes = {}
    for nprobe in sorted({min(p, nlist) for p in o.nprobes}):
        probe = KnnIndex(ivf.cpu_index, KnnConfig(index=factory, nprobe=nprobe))
        (d, p), query = repeat(lambda probe=probe: probe.search(queries, k), o.repeats)
        probes[str(nprobe)] = {
            "recall": recall_at_k(d.numpy(), p.numpy(), ref_d.numpy(), ref_p.numpy()),
            "query_ms": _per_query_ms(query, len(queries)),
            "fallback_queries": probe.last_fallback,
        }
    return {
        "num_train": num_train,
        "dim": int(train.shape[1]),
        "k": k,
        "queries": len(queries),
        "queries_from": "held-out" if len(held) else "training",
        "flat": {"build": flat_build, "query_ms": _per_query_ms(flat_query, len(queries)), "mb": _mb(flat)},
        "ivf": {"factory": factory, "nlist": nlist, "build": ivf_build, "mb": _mb(ivf), "nprobe": probes},
    }


def neighbours_part(
    features: np.ndarray, ids: list[str], manifest: dict[str, Any], stored: dict[str, Any], o: ScaleOptions
) -> dict[str, Any]:
    """``fastif prepare``'s neighbours phase again on the workspace's features, listed through the index
    ``--scale-neighbors-index`` picks at this N (``auto``: what a prepare would use now): the index build
    and the search, and the share of the stored lists it finds (recall@k, ties at the k-th distance
    counted as found) when the stored lists came from exact search."""
    from fastif_core.config import PrepareConfig
    from fastif_core.modeling.knn import KnnIndex, neighbour_index_config
    from fastif_core.workspace.prepare import neighbors_of

    cfg = PrepareConfig.from_json_dict(manifest["prepare_config"])
    num_train = int(manifest["num_train"])
    near_cfg = neighbour_index_config(o.neighbors_index, num_train, cfg.knn) or cfg.knn
    index, build_s = timed(lambda: KnnIndex.build(features[:num_train], near_cfg))
    lists, search_s = timed(lambda: neighbors_of(index, features, ids, num_train, cfg.neighbors))
    how = manifest.get("neighbors_index") or {"index": cfg.knn.index}  # older manifests: the workspace's
    exact = how["index"] == "Flat"
    found = []
    for query, mine in lists.items() if exact else ():
        ref = stored.get(query) or []
        if not ref:
            continue
        names, limit = {t for t, _ in ref}, ref[-1][1] * (1 + 1e-5) + 1e-6
        found.append(sum(1 for t, d in mine[: len(ref)] if t in names or d <= limit) / len(ref))
    return {
        "index": near_cfg.index,
        "nprobe": near_cfg.nprobe,
        "k": cfg.neighbors,
        "examples": len(lists),
        "build_seconds": build_s,
        "search_seconds": search_s,
        "stored_index": how["index"],
        "recall_vs_stored": float(np.mean(found)) if found else None,
        "compared": len(found),
    }


def _per_query_ms(s: dict[str, Any], queries: int) -> dict[str, Any]:
    return {key: v * 1000 / max(queries, 1) if key != "n" else v for key, v in s.items()}


def _mb(index: Any) -> float:
    import faiss

    return float(faiss.serialize_index(index.cpu_index).nbytes) / 2**20


# ---------------------------------------------------------------------------------------------- engine
def click_part(loaded: Any, tests: Sequence[Any], o: ScaleOptions) -> dict[str, Any]:
    """kNN search (repeated) and one fresh exact click per test example (the median is over examples)."""
    from fastif_core.benchmarks.speed import latency

    k = min(o.click_k, len(loaded.train_ids))
    _, knn = repeat(lambda: loaded.nearest(tests[0].id, k), o.repeats)
    clicks = [latency(loaded, t, InfluenceConfig(s_test=STestConfig.default(), k=k)) for t in tests]
    stages = {s: spread([c["seconds"][s] for c in clicks]) for s in clicks[0]["seconds"]} if clicks else {}
    return {"k": k, "knn": knn, "examples": [c["example_id"] for c in clicks], "stages": stages}


def sketch_part(loaded: Any, tests: Sequence[Any], o: ScaleOptions) -> dict[str, Any]:
    """The sketch click over all N when the default index is complete (else why it was skipped)."""
    from fastif_core.config import SketchConfig, SketchQueryConfig
    from fastif_core.errors import WorkspaceError
    from fastif_core.queries import sketch as sq
    from fastif_core.workspace.sketches import require_index

    metas = (Path(loaded.root) / "sketches" / str(loaded.model_id)).glob("*/meta.json")
    if not any(json.loads(m.read_text()).get("status") == "complete" for m in metas):  # the app's check
        return {"skipped": f"no complete sketch index of model {loaded.model_id} (`fastif sketch`)"}
    try:
        index = require_index(loaded, SketchConfig())
    except WorkspaceError as err:
        return {"skipped": str(err)}
    cfg = InfluenceConfig()
    sess, session_s = timed(lambda: sq.session(loaded, SketchQueryConfig(SketchConfig()), cfg))
    (values, split), total = repeat(
        lambda: sq.sketch_scores(sess, loaded.objective, [tests[0].batch], cfg), o.repeats
    )
    return {
        "dim": index.meta.get("dim"),
        "num_train": int(values.shape[1]),
        "session_seconds": session_s,
        "click": total,
        "last_split": split,
    }


def graph_part(loaded: Any, store: Any, o: ScaleOptions, progress: Progress) -> dict[str, Any]:
    """The graph of ``--scale-graph-per-slice`` tests per slice at k: matrix, edges and layout, counts."""
    from fastif_core.apps.graph.build import graph_arrays, summary
    from fastif_core.apps.graph.config import GraphConfig
    from fastif_core.apps.graph.influences import graph_influences
    from fastif_core.apps.graph.selection import select_test_set

    k = min(o.graph_k, len(loaded.train_ids))
    influence = InfluenceConfig(s_test=STestConfig.preset(o.graph_preset), k=k, top=1)
    cfg = GraphConfig(
        per_slice=o.graph_per_slice,
        influence=influence,
        seed=o.seed,
        slice_by=o.graph_slice_by,
        incorrect_only=o.graph_incorrect_only,
    ).with_model(loaded.model_id)
    test, select_s = repeat(lambda: select_test_set(store, cfg, loaded.model_id), o.repeats)
    (values, _, counts), influence_s = timed(
        lambda: graph_influences(loaded, test.ids, cfg.influence, k, False, progress, row_block=cfg.row_block)
    )
    (arrays, iterations), layout_s = repeat(lambda: graph_arrays(values, test, cfg), o.repeats)
    found = summary(values, test, arrays)
    return {
        "tests": len(test.ids),
        "slices": len(test.slices),
        "k": k,
        "preset": o.graph_preset,
        "select": select_s,
        "influence": {"seconds": influence_s, **counts},
        "layout": layout_s,
        "layout_iterations": iterations,
        **{key: found[key] for key in ("num_nodes", "num_test_nodes", "num_train_nodes", "num_edges")},
    }


# --------------------------------------------------------------------------------------------- section
PART_OPTIONS = {
    "faiss": ("repeats", "knn_k", "queries", "nlist", "nprobes"),
    "browse": ("repeats", "page_size", "offsets", "search"),
    "example": ("repeats",),
    "click": ("repeats", "click_k", "click_examples", "seed"),
    "sketch": ("repeats", "seed"),
    "graph": (
        "repeats",
        "graph_per_slice",
        "graph_k",
        "graph_preset",
        "graph_slice_by",
        "graph_incorrect_only",
        "seed",
    ),
    "import": ("db_url",),
    "neighbours": ("neighbors_index",),
    "jobs": ("repeats", "jobs", "seed", "db_url"),
}


def fingerprint(manifest: dict[str, Any], part: str, o: ScaleOptions) -> str:
    """What a part's figures depend on: the workspace's build and model, and the part's own options."""
    chosen = {name: getattr(o, name) for name in PART_OPTIONS[part]}
    return config_hash({"build": manifest.get("build"), "model": manifest.get("model_id"), "options": chosen})


class _Context:
    """What the parts share, loaded once and only when a part needs it (the model is heavy)."""

    def __init__(self, root: Path, o: ScaleOptions) -> None:
        from fastif_core.store import Store

        self.root, self.o = root, o
        self.store = Store.open(root)
        self._loaded: Any = None
        self._tests: list[Any] | None = None

    @property
    def loaded(self) -> Any:
        from fastif_core.workspace.layout import LoadedWorkspace

        if self._loaded is None:
            self._loaded = LoadedWorkspace.load(self.root, "cpu")
        return self._loaded

    @property
    def tests(self) -> list[Any]:
        from fastif_core.benchmarks.common import choose_test_examples

        if self._tests is None:
            self._tests = choose_test_examples(
                self.store, self.loaded, max(self.o.click_examples, 1), self.o.seed
            )
        return self._tests

    def example_ids(self, model_id: int) -> list[str]:
        """A training example (the last position) and up to two held-out ones, for the Example part."""
        train = self.store.query_examples(
            in_training_set=True, order_by="train_pos", descending=True, limit=1
        )
        held = self.store.query_examples(in_training_set=False, model_id=model_id, limit=2)
        return [r.id for r in [*train, *held]]


def _run_part(ctx: _Context, part: str, manifest: dict[str, Any], progress: Progress) -> dict[str, Any]:
    from fastif_core.workspace.layout import WorkspacePaths, load_features

    o, model_id = ctx.o, int(manifest["model_id"])
    if part == "faiss":
        features, _ = load_features(WorkspacePaths.of(ctx.root, manifest).features)
        return faiss_part(np.asarray(features, dtype=np.float32), int(manifest["num_train"]), o)
    if part == "neighbours":
        features, ids = load_features(WorkspacePaths.of(ctx.root, manifest).features)
        stored = ctx.store.neighbor_lists(model_id)
        return neighbours_part(np.asarray(features, dtype=np.float32), ids, manifest, stored, o)
    if part == "browse":
        return browse_part(ctx.store, o)
    if part == "example":
        return example_part(ctx.store, model_id, ctx.example_ids(model_id), o)
    if part == "click":
        return click_part(ctx.loaded, ctx.tests[: o.click_examples], o)
    if part == "sketch":
        return sketch_part(ctx.loaded, ctx.tests, o)
    if part == "graph":
        return graph_part(ctx.loaded, ctx.store, o, progress)
    if part == "import":
        return import_part(ctx.store, model_id, o)
    return jobs_part(ctx.root, model_id, ctx.example_ids(model_id), o)


def run_section(
    root: Path, out_dir: Path, o: ScaleOptions, progress: Progress | None = None
) -> dict[str, Any]:
    """The section (see the module docstring): ``OUT/scale.json``, rewritten after each part."""
    import torch

    from fastif_core.workspace.layout import require_prepared

    report = progress or ignore
    manifest = require_prepared(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "scale.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result |= {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "workspace": str(root),
        "build": manifest.get("build"),
        "model_id": manifest["model_id"],
        "num_train": manifest["num_train"],
        "num_examples": manifest.get("num_examples"),
        "threads": torch.get_num_threads(),
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "options": asdict(o),
        "complete": False,
    }
    parts = result.setdefault("parts", {})
    ran, kept = [], []

    def save() -> None:
        tmp = out_dir / ".scale.json.tmp"
        tmp.write_text(json.dumps(result, indent=2, default=float))
        tmp.replace(path)

    ctx = _Context(root, o)
    try:
        for i, part in enumerate(o.parts):
            key = fingerprint(manifest, part, o)
            if not o.fresh and (parts.get(part) or {}).get("fingerprint") == key:
                kept.append(part)
                continue
            report(i / len(o.parts), f"scale: {part}")
            clock = PhaseClock()
            with clock.phase(part):
                found = _run_part(ctx, part, manifest, report)
            assert not set(found) & {"seconds", "peak_rss_mb", "peak_growth_mb", "fingerprint"}, part
            parts[part] = {**found, **clock.phases[part], "fingerprint": key}
            ran.append(part)
            save()
    finally:
        ctx.store.close()
    result |= {"ran": ran, "kept": kept, "complete": all(p in parts for p in PARTS)}
    save()
    report(1.0, f"wrote {path}")
    return result


def report(result: dict[str, Any]) -> str:
    """The headline figures as text (medians)."""
    lines = [f"scale on {result['num_train']} training examples ({result['threads']} threads)"]
    parts = result.get("parts", {})
    for name in PARTS:
        p = parts.get(name)
        if p is None:
            continue
        head = f"{name:<8} {p['seconds']:8.2f} s, peak RSS {p['peak_rss_mb']:.0f} MB (+{p['peak_growth_mb']:.0f})"
        lines.append(head + ("" if "skipped" not in p else f": skipped ({p['skipped']})"))
        if name == "faiss":
            for nprobe, q in p["ivf"]["nprobe"].items():
                lines.append(
                    f"  IVF{p['ivf']['nlist']} nprobe {nprobe}: recall@{p['k']} {q['recall']:.3f}, "
                    f"{q['query_ms']['median']:.3f} ms/query (Flat {p['flat']['query_ms']['median']:.3f})"
                )
        if name == "neighbours":
            recall = p["recall_vs_stored"]
            lines.append(
                f"  {p['index']} (nprobe {p['nprobe']}): build {p['build_seconds']:.1f} s, {p['examples']} lists "
                f"in {p['search_seconds']:.1f} s"
                + ("" if recall is None else f", recall@{p['k']} {recall:.4f}")
            )
        if name == "browse":
            for offset, page in p["pages"].items():
                lines.append(f"  page at offset {offset}: {page['seconds']['median'] * 1000:.1f} ms")
        if name == "graph":
            lines.append(
                f"  {p['num_nodes']} nodes, {p['num_edges']} edges; layout {p['layout']['median']:.2f} s"
            )
        if name == "import":
            lines.append(
                f"  {p['examples']} examples, {p['neighbour_rows']} neighbour rows into {p['database']}: "
                f"{p['publish_seconds']:.1f} s, {p['database_mb']:.0f} MB"
            )
        if name == "jobs" and "skipped" not in p:
            lines.append(f"  {p['inserted']} jobs; list {p['list']['median'] * 1000:.1f} ms")
    return "\n".join(lines)
