"""The sketch parts of the ``fastif`` command line: ``fastif sketch`` (build the index, or ``--submit`` it as a
``sketch`` job) and ``fastif influence --method sketch`` (its options are added to the influence parser).
:mod:`fastif_core.cli.commands` calls :func:`add_sketch_parser`, :func:`add_method_options` and
:func:`cmd_influence_sketch`; this module never imports the CLI."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from fastif_core.cli.options import add_workspace_argument, positive_int
from fastif_core.config import (
    CURVATURE_EXAMPLES,
    DTYPES,
    METHODS,
    PROJECTIONS,
    ROWS,
    SKETCH_CURVATURES,
    SMALL,
    SketchConfig,
    SketchQueryConfig,
    help_of,
)
from fastif_core.errors import ConfigError


def _sketch_options(p: argparse.ArgumentParser, prefix: str = "") -> None:
    d = SketchConfig()
    p.add_argument(f"--{prefix}dim", type=positive_int, default=d.dim, help=help_of(SketchConfig, "dim"))
    p.add_argument(
        f"--{prefix}projection",
        choices=PROJECTIONS,
        default=d.projection,
        help=help_of(SketchConfig, "projection"),
    )
    p.add_argument(f"--{prefix}small", choices=SMALL, default=d.small, help=help_of(SketchConfig, "small"))
    p.add_argument(f"--{prefix}seed", type=int, default=d.seed, help=help_of(SketchConfig, "seed"))
    p.add_argument(f"--{prefix}rows", choices=ROWS, default=d.rows, help=help_of(SketchConfig, "rows"))
    p.add_argument(f"--{prefix}dtype", choices=DTYPES, default=d.dtype, help=help_of(SketchConfig, "dtype"))


def _sketch_config(a: argparse.Namespace, prefix: str = "") -> SketchConfig:
    names = ("dim", "projection", "small", "seed", "rows", "dtype")
    extra = {n: getattr(a, n) for n in ("batch_size", "block") if getattr(a, n, None) is not None}
    return SketchConfig(**{n: getattr(a, prefix + n) for n in names}, **extra).validate()


def add_sketch_parser(
    sub: argparse._SubParsersAction, device_arg: Callable[[argparse.ArgumentParser], None]
) -> None:
    p = sub.add_parser(
        "sketch",
        help="sketch every training example's gradient (for --method sketch)",
        description="Build the workspace model's sketch index: one d-dimensional Kronecker-factored projection "
        "of each training example's loss gradient, stored as a memory-mapped N x d array in resumable blocks "
        "(re-running continues an interrupted build).",
    )
    add_workspace_argument(p)
    _sketch_options(p)
    d = SketchConfig()
    p.add_argument(
        "--batch-size", type=positive_int, default=d.batch_size, help=help_of(SketchConfig, "batch_size")
    )
    p.add_argument("--block", type=positive_int, default=d.block, help=help_of(SketchConfig, "block"))
    p.add_argument(
        "--self-influence",
        action="store_true",
        help="also every training example's self-influence "
        "(Gauss-Newton over all N, μ = 50; the Browse page sorts by it)",
    )
    p.add_argument(
        "--precondition",
        action="store_true",
        help="also keep H⁻¹φ of every training example (Gauss-Newton over all N, μ = 50), so that no "
        "process factors the curvature again (the first query does it otherwise)",
    )
    p.add_argument("--submit", action="store_true", help="queue a `sketch` job for the worker instead")
    device_arg(p)
    p.add_argument("--json", action="store_true", help="print the index's description as JSON")
    p.set_defaults(func=cmd_sketch)


def cmd_sketch(a: argparse.Namespace) -> int:
    cfg = _sketch_config(a)
    if a.submit:
        return _submit(a, cfg)
    from fastif_core.parallel.group import launched_by_torchrun

    if launched_by_torchrun():  # every rank builds its blocks; rank 0 then goes on alone
        from fastif_core.cli.torchrun import build_sketches_on_group

        built = build_sketches_on_group(a.workspace, cfg)
        if built is None:
            return 0
        loaded, out = built
    else:
        from fastif_core.device import resolve_device
        from fastif_core.workspace.layout import LoadedWorkspace
        from fastif_core.workspace.sketches import build_sketches

        loaded = LoadedWorkspace.load(a.workspace, str(resolve_device(a.device)), search=False)
        out = build_sketches(loaded, cfg, show_progress=True).describe()
    if a.self_influence or a.precondition:
        from fastif_core.config import InfluenceConfig
        from fastif_core.queries.sketch import session

        sess = session(loaded, SketchQueryConfig(sketch=cfg), InfluenceConfig())  # as ready_for_queries
        out["curvature_seconds"] = dict(sess.seconds)
        if a.self_influence:
            values = sess.self_influence()
            out["self_influence"] = {
                "seconds": sess.seconds,
                "max": float(values.max()),
                "median": float(values.median()),
            }
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"sketches of model {out['model_id']}: {out['num_train']} x {out['dim']} (k={out['k']}), "
            f"{out['status']}, {out['disk_bytes'] / 2**20:.1f} MiB at {out['path']}"
            + (f" ({out['ranks']} ranks, {out['blocks_computed']} blocks built)" if "ranks" in out else "")
        )
    return 0


def _submit(a: argparse.Namespace, cfg: SketchConfig) -> int:
    from fastif_core import jobs
    from fastif_core.cli.jobs import job_to_dict
    from fastif_core.jobs import SketchParams
    from fastif_core.store import Store
    from fastif_core.workspace.layout import require_prepared

    manifest = require_prepared(a.workspace)
    store = Store.open(a.workspace)
    try:
        job = jobs.enqueue(store, "sketch", SketchParams(config=cfg, model_id=int(manifest["model_id"])))
    finally:
        store.close()
    print(json.dumps(job_to_dict(job), indent=2) if a.json else f"job {job.id} ({job.kind}): {job.status}")
    return 0


# ---- fastif prepare: the sketch index by default when it costs at most the model's training ----------
PREPARE_SKETCHES = ("auto", "always", "never")


def add_prepare_sketch_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sketches",
        choices=PREPARE_SKETCHES,
        default="auto",
        help="after the prepare, the default sketch index (`fastif sketch`): auto (built when its "
        "estimate, timed on its first block, is at most the model's training time and the disk has room; "
        "otherwise the first block is kept and `fastif sketch` or the dashboard finishes it) | always | never",
    )


def sketch_after_prepare(root: Any, manifest: dict, when: str, device: str) -> dict[str, Any] | None:
    """``--sketches auto|always``: :func:`fastif_core.workspace.sketches.build_within_budget` with the
    model's own training seconds (from its checkpoint) as the budget; None with ``never``."""
    import shutil

    from fastif_core.modeling.classifier import TRAIN_META
    from fastif_core.workspace.layout import LoadedWorkspace, WorkspacePaths
    from fastif_core.workspace.sketches import build_within_budget, disk_estimate

    if when == "never":
        return None
    loaded = LoadedWorkspace.load(root, device, search=False)
    cfg = SketchConfig()
    meta = WorkspacePaths.of(root, manifest).model_dir(loaded.model_id) / TRAIN_META
    trained = float(json.loads(meta.read_text()).get("metrics", {}).get("seconds", 0.0))
    need, free = disk_estimate(loaded, cfg), shutil.disk_usage(root).free
    if when == "auto" and 2 * need > free:
        return {"status": "deferred", "reason": "disk", "disk_bytes": need, "free_bytes": free}
    from fastif_core.queries.sketch import ready_for_queries

    budget = float("inf") if when == "always" else trained
    out = build_within_budget(loaded, cfg, budget, show_progress=True)
    if out["status"] == "complete":
        out["curvature_seconds"] = ready_for_queries(loaded, cfg)  # the first click: one product
    return out


def format_prepare_sketch(root: Any, out: dict[str, Any]) -> str:
    if out["status"] == "complete":
        return f"sketches: {out['num_train']} x {out['dim']} ({out['disk_bytes'] / 2**30:.2f} GiB) at {out['path']}"
    if out.get("reason") == "disk":
        why = f"{out['disk_bytes'] / 2**30:.1f} GiB needed, {out['free_bytes'] / 2**30:.1f} GiB free"
    else:
        why = (
            f"estimated {out['estimate_seconds']:.0f} s > the model's training {out['budget_seconds']:.0f} s; "
            f"{out['blocks']['done']}/{out['blocks']['total']} blocks kept"
        )
    return (
        f"sketches deferred ({why}): build with `fastif sketch --workspace {root}` or the dashboard's button"
    )


# ---- fastif influence --method sketch ---------------------------------------------------------------


def add_method_options(p: argparse.ArgumentParser) -> None:
    """``--method`` and the sketch query's options (``--sketch-*``, ``--relative``)."""
    p.add_argument(
        "--method",
        choices=METHODS,
        default="exact",
        help="exact (the k nearest or --full, scored by the model: the reference) | sketch (all N training "
        "examples from the sketch index of `fastif sketch`, in about a second)",
    )
    _sketch_options(p, "sketch-")
    q = SketchQueryConfig()
    p.add_argument(
        "--sketch-curvature",
        choices=SKETCH_CURVATURES,
        default=q.curvature,
        help=help_of(SketchQueryConfig, "curvature"),
    )
    p.add_argument(
        "--sketch-examples",
        choices=CURVATURE_EXAMPLES,
        default=q.examples,
        help=help_of(SketchQueryConfig, "examples"),
    )
    p.add_argument("--relative", action="store_true", help=help_of(SketchQueryConfig, "relative"))
    p.add_argument(
        "--no-precondition",
        dest="precondition",
        action="store_false",
        help="factor the curvature in this process instead of keeping H⁻¹φ next to the index (the default "
        "keeps it: " + help_of(SketchQueryConfig, "precondition") + ")",
    )


def query_config_from_args(a: argparse.Namespace) -> SketchQueryConfig:
    return SketchQueryConfig(
        sketch=_sketch_config(a, "sketch_"),
        curvature=a.sketch_curvature,
        examples=a.sketch_examples,
        relative=a.relative,
        precondition=a.precondition,
    ).validate()


def _one_example(a: argparse.Namespace, what: str) -> None:
    if a.example is None or any(
        getattr(a, n, None) for n in ("examples", "examples_from", "dataset", "split")
    ):
        raise ConfigError(f"{what}: give one --example ID (many examples: `fastif matrix --method sketch`)")


def click_params(a: argparse.Namespace, cfg: Any, model_id: int) -> Any:
    """``fastif submit influence --method sketch``: a ``sketch_click`` job (the sketch list over all N,
    then the exact re-rank of its top ``--rerank`` of each sign and the kNN set of ``--k``)."""
    from fastif_core.jobs import SketchClickParams

    _one_example(a, "submit influence --method sketch")
    if cfg.k is None:
        raise ConfigError(
            "--full is invalid with submit --method sketch: allowed --k K (the kNN set re-ranked)"
        )
    return SketchClickParams(
        example_id=a.example,
        config=cfg,
        sketch=query_config_from_args(a),
        model_id=model_id,
        **({} if a.rerank is None else {"rerank": a.rerank}),
    )


def cmd_influence_sketch(a: argparse.Namespace, cfg: Any, device: str, fmt: Callable[[dict], str]) -> int:
    """``fastif influence --method sketch --example ID``."""
    from fastif_core.queries.sketch import influence_sketch_query

    _one_example(a, "--method sketch")
    out = influence_sketch_query(a.workspace, a.example, cfg, query_config_from_args(a), device=device)
    print(json.dumps(out, indent=2) if a.json else fmt(out))
    return 0
