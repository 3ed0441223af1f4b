"""``fastif graph``: build an influence graph (through the worker when one is alive, else in this
process) and print its id, size, timings, slice statistics (Table 4) and slice correlations with their
counts (Table 5); ``fastif graph --export ID --format graphml|json --out FILE`` writes a stored graph.

Only argparse and the settings are imported here, so ``fastif --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from fastif_core.apps.graph.config import FILTER_FIELDS, SLICE_BY, GraphConfig
from fastif_core.cli.options import add_workspace_argument, positive_int
from fastif_core.cli.sketch import add_method_options, query_config_from_args
from fastif_core.config import PRESETS, InfluenceConfig, STestConfig, help_of
from fastif_core.errors import ConfigError, JobError

EXPORT_FORMATS = ("graphml", "json")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``fastif graph``."""

    p = sub.add_parser(
        "graph",
        help="influence graph of test slices and their training examples (paper Sec. 6.2)",
        description="Influence of the training set on test examples chosen by slices (default: incorrect "
        "predictions, 100 per HANS heuristic and per other dataset), the circular bipartite layout and the "
        "slice tables. Runs through the worker when one is alive, else in this process.",
    )
    add_workspace_argument(p)
    d = GraphConfig()
    p.add_argument(
        "--per-slice", type=positive_int, default=d.per_slice, help=help_of(GraphConfig, "per_slice")
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--incorrect-only",
        dest="incorrect_only",
        action="store_true",
        default=True,
        help="only incorrectly predicted examples (default)",
    )
    which.add_argument("--all", dest="incorrect_only", action="store_false", help="correct ones too")
    for name in FILTER_FIELDS:
        p.add_argument(
            f"--{name}",
            action="append",
            default=[],
            metavar="NAME",
            help=f"{help_of(GraphConfig, name)} (repeatable)",
        )
    p.add_argument("--slice-by", choices=SLICE_BY, default=d.slice_by, help=help_of(GraphConfig, "slice_by"))
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--k", type=positive_int, default=InfluenceConfig().k, help=help_of(InfluenceConfig, "k")
    )
    mode.add_argument(
        "--full", action="store_true", help="score all training examples for every test example"
    )
    p.add_argument(
        "--preset", choices=PRESETS, default="default", help="s_test settings (see `fastif influence`)"
    )
    p.add_argument(
        "--depth",
        type=positive_int,
        default=None,
        help=f"{help_of(STestConfig, 'depth')} (default: the preset's)",
    )
    add_method_options(p)  # --method exact | sketch, --sketch-*
    p.add_argument("--seed", type=int, default=d.seed, help=help_of(GraphConfig, "seed"))
    p.add_argument(
        "--row-block", type=positive_int, default=d.row_block, help=help_of(GraphConfig, "row_block")
    )
    p.add_argument(
        "--export", type=positive_int, metavar="ID", help="write stored graph ID instead of building one"
    )
    p.add_argument(
        "--format", choices=EXPORT_FORMATS, default="graphml", help="export format (default graphml)"
    )
    p.add_argument("--out", type=Path, help="export file (with --export)")
    p.add_argument("--in-process", action="store_true", help="never hand the job to a running worker")
    p.add_argument("--device", default="auto", help="torch device when run in process: auto, cpu, cuda:N")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_graph)


def config_from_args(a: argparse.Namespace) -> GraphConfig:
    s_test = STestConfig.preset(a.preset, **({"depth": a.depth} if a.depth else {}))
    influence = InfluenceConfig(s_test=s_test, k=None if a.full else a.k, top=1)
    lists = {name: tuple(getattr(a, name)) for name in FILTER_FIELDS}
    return GraphConfig(
        per_slice=a.per_slice,
        incorrect_only=a.incorrect_only,
        slice_by=a.slice_by,
        influence=influence,
        method=a.method,
        sketch=query_config_from_args(a),
        seed=a.seed,
        row_block=a.row_block,
        **lists,
    ).validate()


def cmd_graph(a: argparse.Namespace) -> int:
    if a.export is not None:
        return cmd_export(a)
    if a.out is not None:
        raise ConfigError("--out is only for --export ID")
    cfg = config_from_args(a)
    result = (
        via_worker(a.workspace, cfg) if not a.in_process and worker_alive(a.workspace) else in_process(a, cfg)
    )
    print(json.dumps(result, indent=2) if a.json else format_graph(result))
    return 0


def in_process(a: argparse.Namespace, cfg: GraphConfig) -> dict[str, Any]:
    from fastif_core.apps.graph.build import build_graph, preflight
    from fastif_core.device import resolve_device

    preflight(a.workspace, cfg)  # bad settings or an empty test set: one line, before loading the model
    with _bar() as report:
        return build_graph(a.workspace, cfg, device=str(resolve_device(a.device)), progress=report)


def worker_alive(root: Path) -> bool:
    from fastif_core.store import Store
    from fastif_core.worker.process import running
    from fastif_core.workspace.layout import require_prepared

    require_prepared(root)
    with Store.open(root) as store:
        return bool(running(store.list_workers(alive_within_s=30)))


def via_worker(root: Path, cfg: GraphConfig, poll: float = 1.0) -> dict[str, Any]:
    """Queue the graph job (an equal one is reused), follow its progress, return the stored graph."""
    from fastif_core import jobs
    from fastif_core.apps.graph.build import graph_to_dict, preflight
    from fastif_core.store import Store

    model_id = preflight(root, cfg)  # a job that cannot work is refused before it is queued
    with Store.open(root) as store, _bar() as report:
        job = jobs.enqueue(store, "graph", cfg.with_model(model_id))
        while not job.finished:
            report(job.progress, job.message or job.status)
            time.sleep(poll)
            job = store.get_job(job.id)
        if job.status != "done":
            raise JobError(
                f"graph job {job.id} {job.status}: {(job.error or '').splitlines()[0] if job.error else ''}"
            )
        info = store.get_app_result("graph", int(job.result["graph_id"]))
    return graph_to_dict(info, cached=bool(job.result.get("cached")))


class _bar:
    """A tqdm bar fed by ``(fraction, message)`` (the shape of every progress callback in fastif)."""

    def __enter__(self) -> Any:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=1000, desc="graph", unit="‰", leave=False)

        def report(fraction: float, message: str) -> None:
            self.bar.n = int(1000 * min(max(fraction, 0.0), 1.0))
            self.bar.set_postfix_str(message[:100], refresh=True)

        return report

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


def cmd_export(a: argparse.Namespace) -> int:
    from fastif_core.apps.graph.stored import export_graph

    if a.out is None:
        raise ConfigError("--export needs --out FILE")
    path, g = export_graph(a.workspace, a.export, a.format, a.out)
    out = {
        "graph_id": a.export,
        "format": a.format,
        "out": str(path),
        "nodes": g.number_of_nodes(),
        "edges": g.number_of_edges(),
    }
    print(
        json.dumps(out, indent=2)
        if a.json
        else f"wrote graph {a.export} ({out['nodes']} nodes, {out['edges']} edges) as {a.format} to {path}"
    )
    return 0


def _num(v: float | None, spec: str = ".3g") -> str:
    return "—" if v is None else format(v, spec)


def format_graph(r: dict[str, Any]) -> str:
    """Size, timings, Table 4 and Table 5 (each correlation with its count) as aligned text."""
    s = r["seconds"]
    lines = [
        f"graph {r['graph_id']}{' [stored]' if r['cached'] else ''}: num_nodes={r['num_nodes']} "
        f"({r['num_test_nodes']} test, {r['num_train_nodes']} training), num_edges={r['num_edges']}",
        f"seconds: total {s['total']:.1f} (influence {s['influence']:.1f}, layout {s['layout']:.2f}, "
        f"statistics {s['statistics']:.2f})",
        "slice statistics (mean |I| of helpful / harmful edges):",
    ]
    for row in r["statistics"]:
        lines.append(
            f"  {row['slice']:<22} tests={row['test_examples']:<4} nodes={row['train_nodes']:<6} "
            f"helpful {row['helpful_edges']:>7} × {_num(row['helpful_mean_abs'])}   "
            f"harmful {row['harmful_edges']:>7} × {_num(row['harmful_mean_abs'])}"
        )
    names, corr, count = r["correlation"]["slices"], r["correlation"]["pearson"], r["correlation"]["count"]
    lines.append(
        "correlation (Pearson of mean influence per training example, n = shared training examples):"
    )
    lines.append(" " * 24 + "".join(f"{n[:18]:>20}" for n in names))
    for i, name in enumerate(names):
        cells = "".join(f"{_num(corr[i][j], '+.3f') + f' (n={count[i][j]})':>20}" for j in range(len(names)))
        lines.append(f"  {name[:22]:<22}{cells}")
    return "\n".join(lines)
