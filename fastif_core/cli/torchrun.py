"""``fastif sketch`` and ``fastif matrix`` launched by ``torchrun`` (one process per rank, on one machine or
several): every rank starts the device group from torchrun's environment (:class:`ParallelContext`) and
loads the workspace once; rank 0 runs the command, writes the results and prints, the other ranks serve
its group commands, each computing its shard: the sketch blocks ``b ≡ rank (mod world)``
(:func:`fastif_core.worker.sketch.build_on_rank`, as a ``sketch`` job does) or its share of each row block's
repetitions and columns of a matrix (:mod:`fastif_core.parallel.spmd`, as an ``influence_many`` job does).
Every machine needs the same workspace path (a shared file system: the sketch ranks write into the same
files) and a database it can reach (``FASTIF_DB_URL``). ``--device`` is ignored: each rank uses
``cuda:LOCAL_RANK`` when every local rank has a GPU, else the CPU (gloo)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastif_core.cli.options import progress_bar
from fastif_core.config import InfluenceConfig, SketchConfig, to_dict
from fastif_core.parallel.group import ParallelContext, RankState
from fastif_core.worker.handlers import load_workspace_state

Body = Callable[[ParallelContext, str, RankState], Any]


def run_on_group(workspace: str | Path, body: Body, *, search: bool = True) -> Any:
    """Start the group from torchrun's environment and load the workspace on every rank (the kNN index on
    rank 0 only, and only with ``search``); rank 0 returns ``body(group, key, its state)``, the other ranks
    serve until it is done and return None. The group is closed before this returns, on every rank."""
    from fastif_core.workspace.layout import require_prepared

    group = ParallelContext.start()
    try:
        if not group.is_coordinator:
            group.serve()
            return None
        root = Path(workspace).resolve()
        manifest = require_prepared(root)
        key = f"{root}#{manifest['model_id']}#{manifest.get('prepare_hash', '')}"
        state = group.load(key, load_workspace_state, root=str(root), search=search)
        return body(group, key, state)
    finally:
        group.close()


def build_sketches_on_group(workspace: str | Path, cfg: SketchConfig) -> tuple[Any, dict[str, Any]] | None:
    """``torchrun ... fastif sketch``: rank 0 gets ``(its loaded workspace, the index's description with
    ``ranks`` and ``shards``, the blocks each rank computed)`` (and draws a progress bar of its own blocks);
    the other ranks get None."""
    from fastif_core.worker.sketch import build_on_rank
    from fastif_core.workspace.sketches import create_index

    def body(group: ParallelContext, key: str, state: RankState) -> tuple[Any, dict[str, Any]]:
        loaded = state.info["loaded"]
        create_index(loaded, cfg)  # rank 0 first: every rank then opens the same files
        return loaded, group.call(build_on_rank, key, {"cfg": to_dict(cfg)}, progress_bar("sketch"))

    return run_on_group(workspace, body, search=False)


def matrix_on_group(
    workspace: str | Path, test_ids: Sequence[str], cfg: InfluenceConfig, **options: Any
) -> Any:
    """``torchrun ... fastif matrix``: :func:`fastif_core.queries.matrix.influence_matrix` with each row
    block a query of the group; rank 0 gets the :class:`~fastif_core.queries.matrix.MatrixResult`, the
    other ranks None (rank 0 draws a progress bar). ``options``: ``full``, ``row_block``, ``col_block``."""
    from fastif_core.queries.matrix import influence_matrix

    def body(group: ParallelContext, key: str, state: RankState) -> Any:
        def runner(loaded: Any, batches: list, candidates: Any, c: InfluenceConfig, progress: Any) -> Any:
            return group.influence_many(key, batches, candidates, c, progress)

        loaded, bar = state.info["loaded"], progress_bar("matrix")
        return influence_matrix(loaded, list(test_ids), cfg, runner=runner, progress=bar, **options)

    return run_on_group(workspace, body)
