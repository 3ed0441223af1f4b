"""The many-example parts of the ``fastif`` command line: ``fastif influence --examples ...`` (also
``--examples-from FILE`` and the browse filters ``--dataset/--split/--incorrect/--limit``), the same for
``fastif submit influence`` (an ``influence_many`` job), and ``fastif matrix``.

:mod:`fastif_core.cli.commands` owns the parser and passes its shared option helpers in, so this module never
imports the CLI (no import cycle).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from fastif_core.cli.options import progress_bar
from fastif_core.errors import ConfigError

SELECTORS = ("example", "examples", "examples_from")
FILTERS = ("dataset", "split", "incorrect")


def add_selection_options(p: argparse.ArgumentParser) -> None:
    """The ways to name many test examples (besides ``--example ID``)."""
    p.add_argument("--examples", metavar="ID1,ID2,...", help="several example ids: one batched run")
    p.add_argument(
        "--examples-from", metavar="FILE", help="a file of example ids, one per line: one batched run"
    )
    p.add_argument("--dataset", help="with --split/--incorrect/--limit: the examples `fastif examples` lists")
    p.add_argument("--split", help="only examples of this split (train, heldout, challenge, ...)")
    p.add_argument("--incorrect", action="store_true", help="only examples the model gets wrong")
    p.add_argument("--limit", type=int, default=None, help="at most this many filtered examples (default 20)")


def is_many(a: argparse.Namespace) -> bool:
    """Whether the arguments name several examples (anything but a lone ``--example``).

    Raises:
        ConfigError: no example named at all, or two ways of naming them at once.
    """
    given = [name for name in SELECTORS if getattr(a, name, None) is not None]
    filtered = any(getattr(a, f, None) for f in FILTERS) or getattr(a, "limit", None) is not None
    if len(given) > 1 or (given and filtered):
        names = [f"--{n.replace('_', '-')}" for n in given] + (["the filters"] if filtered else [])
        raise ConfigError(f"examples: {' and '.join(names)} both name the test examples; give one of them")
    if not given and not filtered:
        raise ConfigError(
            "examples: one of --example ID, --examples ID1,ID2, --examples-from FILE or the "
            "filters --dataset/--split/--incorrect/--limit is required"
        )
    return given != ["example"]


def selected_ids(a: argparse.Namespace) -> list[str]:
    """The example ids the arguments name, in order."""
    from fastif_core.queries.examples import select_examples

    if a.limit is not None and a.limit < 1:
        raise ConfigError(f"limit={a.limit} is invalid: allowed an integer >= 1")
    if a.example is not None:
        return [a.example]
    return select_examples(
        a.workspace,
        ids=a.examples,
        ids_file=a.examples_from,
        dataset=a.dataset,
        split=a.split,
        incorrect=a.incorrect,
        limit=a.limit or 20,
    )


def cmd_influence_many(a: argparse.Namespace, cfg: Any, device: str, fmt: Callable[[dict], str]) -> int:
    """``fastif influence`` for several examples: one batched run, a JSON list (or one block per example)."""
    from fastif_core.queries.influence import influence_query_many

    answers = influence_query_many(a.workspace, selected_ids(a), cfg, device=device, show_progress=True)
    print(json.dumps(answers, indent=2) if a.json else "\n\n".join(fmt(r) for r in answers))
    return 0


def many_params(a: argparse.Namespace, cfg: Any, model_id: int) -> Any:
    """The ``influence_many`` job of ``fastif submit influence --examples ...`` (ids checked first)."""
    from fastif_core.jobs import ManyInfluenceParams

    return ManyInfluenceParams(example_ids=tuple(checked_ids(a, model_id)), config=cfg, model_id=model_id)


def checked_ids(a: argparse.Namespace, model_id: int) -> list[str]:
    """:func:`selected_ids`, each checked to be an example of the workspace (before any work)."""
    from fastif_core.queries.examples import require_example
    from fastif_core.store import Store

    ids = selected_ids(a)
    store = Store.open(a.workspace)
    try:
        for i in ids:
            require_example(store, i, model_id)
    finally:
        store.close()
    return ids


# ---- fastif matrix ---------------------------------------------------------------------------------


def add_matrix_parser(
    sub: argparse._SubParsersAction,
    influence_options: Callable[[argparse.ArgumentParser], None],
    config_from_args: Callable[[argparse.Namespace], Any],
) -> None:
    """``fastif matrix``: the same options as ``fastif influence`` plus the block layout."""
    p = sub.add_parser(
        "matrix",
        help="influence matrix of many test examples (kNN union, or every training example)",
        description="Compute and store the (tests x training examples) influence matrix: the union of the "
        "tests' k nearest training examples (NaN where a pair is not a candidate of that test) or, with "
        "--full, every training example. Stored block by block: re-running continues an interrupted run.",
    )
    influence_options(p)
    p.add_argument(
        "--row-block",
        type=int,
        default=None,
        help="tests scored together (default 32; memory ≈ row_block × P × 4 bytes + the solver's; a larger "
        "block shares each candidate's backward among more tests)",
    )
    p.add_argument(
        "--col-block", type=int, default=None, help="candidate columns per stored block (default 1024)"
    )
    p.set_defaults(func=lambda a: cmd_matrix(a, config_from_args(a)))


def cmd_matrix(a: argparse.Namespace, cfg: Any) -> int:
    from fastif_core.device import resolve_device
    from fastif_core.queries.influence import check_request
    from fastif_core.queries.matrix import influence_matrix
    from fastif_core.workspace.layout import LoadedWorkspace, require_prepared

    manifest = require_prepared(a.workspace)
    is_many(a)
    every = a.full or getattr(a, "method", "exact") == "sketch"
    check_request(manifest, replace(cfg, k=None) if every else cfg)
    ids = checked_ids(a, int(manifest["model_id"]))
    layout = {n: getattr(a, n) for n in ("row_block", "col_block") if getattr(a, n) is not None}
    for name, value in layout.items():
        if value < 1:
            raise ConfigError(f"{name}={value} is invalid: allowed an integer >= 1")
    from fastif_core.parallel.group import launched_by_torchrun

    if launched_by_torchrun():  # every rank: its shard of each row block's repetitions and columns
        return _matrix_on_group(a, ids, cfg, layout)
    if getattr(a, "method", "exact") == "sketch":  # every training example, from the sketch index
        from fastif_core.cli.sketch import query_config_from_args
        from fastif_core.queries.sketch_matrix import sketch_matrix

        loaded = LoadedWorkspace.load(a.workspace, str(resolve_device(a.device)), search=False)
        out = sketch_matrix(loaded, ids, cfg, query_config_from_args(a), progress=progress_bar(), **layout)
    else:
        loaded = LoadedWorkspace.load(a.workspace, str(resolve_device(a.device)))
        out = influence_matrix(loaded, ids, cfg, full=a.full, progress=progress_bar(), **layout)
    summary = out.to_dict()
    print(json.dumps(summary, indent=2) if a.json else format_matrix(summary))
    return 0


def _matrix_on_group(a: argparse.Namespace, ids: list[str], cfg: Any, layout: dict[str, int]) -> int:
    from fastif_core.cli.torchrun import matrix_on_group

    if getattr(a, "method", "exact") == "sketch":
        raise ConfigError(
            "--method sketch under torchrun is invalid: a sketch matrix is one product per row block in one "
            "process; run `fastif matrix --method sketch` without torchrun"
        )
    out = matrix_on_group(a.workspace, ids, cfg, full=a.full, **layout)
    if out is not None:  # rank 0
        summary = out.to_dict()
        print(json.dumps(summary, indent=2) if a.json else format_matrix(summary))
    return 0


def format_matrix(r: dict[str, Any]) -> str:
    s, c = r["seconds"], r["chunks"]
    kind = "every training example" if r["full"] else "the kNN union"
    ranks = r.get("columns_per_rank") or []  # computed on a device group now
    shards = f"\n  ranks: {len(ranks)} (columns scored by each: {ranks})" if ranks else ""
    return (
        f"matrix {r['matrix_id']}: {r['shape'][0]} tests x {r['shape'][1]} training examples ({kind}), "
        f"{r['candidate_pairs']} candidate pairs{' [cached]' if r['cached'] else ''}\n"
        f"  blocks: {c['total']} ({c['computed']} computed now, {c['found_stored']} found stored)\n"
        f"  seconds: total {s['total']:.2f} (knn {s['knn']:.2f}, test gradients {s['test_gradient']:.2f}, "
        f"s_test {s['s_test']:.2f}, scoring {s['scoring']:.2f}, store write {s['store_write']:.2f}, "
        f"read {s['read']:.2f})\n  peak memory MiB: {r['peak_memory_mb']}{shards}"
    )
