"""fastif_core: fast influence functions (FastIF) for transformer NLP models.

Sign convention, used everywhere in this package (as in Koh & Liang 2017 and the FastIF paper):
``I(z, z_test) = -∇L(z_test)ᵀ H⁻¹ ∇L(z)``. A *positive* influence means up-weighting the training
example z raises the test loss: z is **harmful**. A *negative* influence means z lowers the test
loss: z is **helpful**. "Most helpful" = most negative, "most harmful" = most positive.

The front door, for a notebook or a script (the CLI and the worker call the same functions)::

    import fastif_core as fastif

    fastif.prepare("workspaces/demo", fastif.PrepareConfig())   # data, fine-tuned model, kNN index
    ws = fastif.open_workspace("workspaces/demo")               # loaded once, reused by every call below
    answer = fastif.influence(ws, "demo-hans:challenge:ex0", fastif.InfluenceConfig(k=100))
    matrix = fastif.influence_matrix(ws, ["demo-hans:challenge:ex0", "demo-hans:challenge:ex1"])

Every answer is stored in the workspace with the settings that produced it and read back when asked
again. Importing this package is cheap (the settings only); torch is imported by the first call.

Layers, bottom up (``docs/ARCHITECTURE.md``): ``config``/``errors``/``device``/``progress`` (vocabulary),
``data/``, ``engine/`` (the math, tensors in and out), ``modeling/`` (classifier, kNN), ``store/``,
``workspace/``, ``jobs`` (the queue's kinds), ``queries/`` (ask, store once, read back), ``parallel/``
(device groups), ``apps/``, ``worker/``, ``benchmarks/``, ``cli/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastif_core.config import InfluenceConfig, KnnConfig, PrepareConfig, STestConfig, TrainConfig

__version__ = "0.1.0"
__all__ = [
    "InfluenceConfig",
    "KnnConfig",
    "PrepareConfig",
    "STestConfig",
    "TrainConfig",
    "__version__",
    "influence",
    "influence_many",
    "influence_matrix",
    "list_examples",
    "open_workspace",
    "prepare",
]

Workspace = Any  # a workspace directory (str or Path) or what open_workspace returned


def prepare(
    root: str | Path, config: PrepareConfig | None = None, *, device: str = "cpu", show_progress: bool = False
) -> dict[str, Any]:
    """Import the data, fine-tune the model, store its predictions and build the kNN index in ``root``
    (``fastif prepare``); returns the workspace manifest. Re-running with equal settings reuses it."""
    from fastif_core.workspace.prepare import prepare as run

    return run(root, (config or PrepareConfig()).validate(), device=device, show_progress=show_progress)


def open_workspace(root: str | Path, device: str = "cpu") -> Any:
    """The prepared workspace loaded on ``device``: model, objective, training set and kNN index
    (:class:`fastif_core.workspace.layout.LoadedWorkspace`), for every call below to reuse."""
    from fastif_core.workspace.layout import LoadedWorkspace

    return LoadedWorkspace.load(root, device)


def list_examples(workspace: Workspace, **filters: Any) -> list[dict[str, Any]]:
    """Examples with label, prediction and slices (``fastif examples``); filters: ``dataset``, ``split``,
    ``incorrect``, ``limit``."""
    from fastif_core.queries.examples import list_examples as run

    return run(_root(workspace), **filters)


def influence(workspace: Workspace, example_id: str, config: InfluenceConfig | None = None) -> dict[str, Any]:
    """The most helpful and harmful training examples of one example (``fastif influence --json``)."""
    from fastif_core.queries.influence import influence_query

    root, loaded = _opened(workspace)
    return influence_query(root, example_id, config or InfluenceConfig(), device=loaded.device, loaded=loaded)


def influence_many(
    workspace: Workspace, example_ids: Sequence[str], config: InfluenceConfig | None = None
) -> list[dict[str, Any]]:
    """:func:`influence` of every example, in one batched run (``fastif influence --examples``)."""
    from fastif_core.queries.influence import influence_query_many

    root, loaded = _opened(workspace)
    cfg = config or InfluenceConfig()
    return influence_query_many(root, example_ids, cfg, device=loaded.device, loaded=loaded)


def influence_matrix(
    workspace: Workspace,
    test_ids: Sequence[str],
    config: InfluenceConfig | None = None,
    *,
    full: bool = False,
) -> Any:
    """The stored (tests x training examples) influence matrix (``fastif matrix``): the kNN union of the
    tests' candidates (NaN outside a test's own) or, with ``full``, every training example."""
    from fastif_core.queries.matrix import influence_matrix as run

    return run(_opened(workspace)[1], list(test_ids), config or InfluenceConfig(), full=full)


def _root(workspace: Workspace) -> Path:
    return Path(getattr(workspace, "root", workspace))


def _opened(workspace: Workspace) -> tuple[Path, Any]:
    loaded = workspace if hasattr(workspace, "root") else open_workspace(workspace)
    return Path(loaded.root), loaded
