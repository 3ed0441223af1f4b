"""The shortcut's speed-up over the naive loop (a measurement, not a test):

    python -m fastif_core.apps.simulate.speed --workspace W [--explanations 3] [--learning-rates 50]

times :func:`~fastif_core.apps.simulate.steps.losses_after_step` (one gradient per explanation example,
every learning rate from it) against :func:`~fastif_core.apps.simulate.steps.losses_after_step_reference`
(a real SGD step, the test loss and a restore for every pair) on the workspace's simulator (trained first
if it is not stored yet) and its first test examples, and prints both times, the ratio and the largest
difference of the two answers as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from fastif_core.apps.simulate.steps import losses_after_step, losses_after_step_reference
from fastif_core.engine.examples import Batch, Examples
from fastif_core.engine.objective import Objective


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_speedup(
    objective: Objective,
    train: Examples,
    positions: Sequence[int],
    lrs: torch.Tensor,
    test_batch: Batch,
    chunk: int = 10,
    repeats: int = 1,
) -> dict[str, Any]:
    """Best-of-``repeats`` seconds of the shortcut and of the naive loop on the same work, their ratio and
    the largest absolute difference of their losses (E × L)."""
    times: dict[str, float] = {}
    out: dict[str, torch.Tensor] = {}
    runs = {
        "shortcut": lambda: losses_after_step(objective, train, positions, lrs, test_batch, chunk),
        "naive": lambda: losses_after_step_reference(objective, train, positions, lrs, test_batch),
    }
    losses_after_step(
        objective, train, positions[:1], lrs[:chunk], test_batch, chunk
    )  # warm-up: kernels, allocator
    losses_after_step_reference(objective, train, positions[:1], lrs[:1], test_batch)
    for name, fn in runs.items():
        best = float("inf")
        for _ in range(repeats):
            _sync(objective.device)
            t0 = time.perf_counter()
            out[name] = fn()
            _sync(objective.device)
            best = min(best, time.perf_counter() - t0)
        times[name] = best
    return {
        "explanations": len(positions),
        "learning_rates": len(lrs),
        "chunk": chunk,
        "device": str(objective.device),
        "seconds": times,
        "speedup": times["naive"] / times["shortcut"],
        "max_abs_difference": float((out["shortcut"] - out["naive"]).abs().max()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    from fastif_core.apps.simulate.config import SimulateConfig
    from fastif_core.apps.simulate.explanations import select_test_examples
    from fastif_core.apps.simulate.run import task_target
    from fastif_core.apps.simulate.simulator import ensure_simulator
    from fastif_core.device import resolve_device
    from fastif_core.store import Store
    from fastif_core.workspace.layout import LoadedWorkspace, default_workspace

    p = argparse.ArgumentParser(
        prog="python -m fastif_core.apps.simulate.speed", description=__doc__.split("\n")[0]
    )
    p.add_argument("--workspace", "-w", default=str(default_workspace()))
    p.add_argument("--explanations", type=int, default=3, help="explanation examples stepped on (default 3)")
    p.add_argument("--learning-rates", type=int, default=50, help="learning rates of the grid (default 50)")
    p.add_argument("--chunk", type=int, default=10, help="learning rates per batched forward (default 10)")
    p.add_argument("--repeats", type=int, default=1, help="best of this many timings (default 1)")
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    cfg = SimulateConfig(test_examples=2, learning_rates=a.learning_rates, lr_chunk=a.chunk).validate()
    loaded = LoadedWorkspace.load(a.workspace, str(resolve_device(a.device)), search=False)
    with Store.open(a.workspace) as store:
        ex = select_test_examples(store, loaded.model_id, cfg)[0]
        sim = ensure_simulator(loaded, store, show_progress=True)
    batch = loaded.encode_test(ex.to_record())
    batch["labels"] = torch.tensor([task_target(ex)])
    lrs = torch.tensor(cfg.grid(), dtype=torch.float64)
    positions = list(range(min(a.explanations, len(loaded.train_ids))))
    result = measure_speedup(sim.objective, loaded.train, positions, lrs, batch, a.chunk, a.repeats)
    print(json.dumps({"workspace": str(a.workspace), "test_example": ex.id, **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
