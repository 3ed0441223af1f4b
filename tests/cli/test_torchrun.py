"""cli/torchrun: ``fastif sketch`` and ``fastif matrix --full`` launched by a real ``torchrun --standalone
--nproc-per-node 2`` (two gloo ranks on this CPU, as across machines): the ranks' shards cover every
training example exactly once, and the sketch index and the full matrix equal a single-process build and
matrix of a copy of the same workspace (float tolerance: other processes, another summation order)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from fastif_core.cli.commands import build_parser, influence_config_from_args
from fastif_core.config import SketchConfig
from fastif_core.queries.matrix import influence_matrix, load_matrix
from fastif_core.workspace.layout import LoadedWorkspace
from fastif_core.workspace.sketches import build_sketches, open_index

REPO = Path(__file__).resolve().parents[2]
TESTS = "demo-hans:challenge:ex0,demo-hans:challenge:ex1"


def torchrun(ws: Path, *args: str) -> dict:
    """``python -m torch.distributed.run --standalone --nproc-per-node 2 -m fastif_core ARGS -w WS --json``:
    rank 0's JSON (the other rank prints nothing)."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd = [*launch, "-m", "fastif_core", *args, "-w", str(ws), "--json"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def test_two_rank_sketch_build_covers_every_example_once_and_equals_one_process(tiny_workspace, tmp_path):
    serial = Path(shutil.copytree(tiny_workspace, tmp_path / "serial"))
    out = torchrun(tiny_workspace, "sketch", "--dim", "300", "--block", "8", "--batch-size", "4")
    n, blocks = out["num_train"], out["blocks"]["total"]
    assert out["status"] == "complete" and out["ranks"] == 2 and blocks > 2
    assert all(out["shards"]), out["shards"]  # both ranks built blocks
    assert sorted(b for shard in out["shards"] for b in shard) == list(range(blocks))  # each block once
    rows = sorted(r for shard in out["shards"] for b in shard for r in range(8 * b, min(8 * b + 8, n)))
    assert rows == list(range(n))  # every training example, exactly once
    one = build_sketches(
        LoadedWorkspace.load(serial, search=False), SketchConfig(dim=300, block=8, batch_size=4)
    )
    two = open_index(Path(out["path"]), one.key)  # the same key: same model, data and settings
    assert two is not None and two.complete
    for read in ("sketches", "rows"):
        a, b = (torch.from_numpy(np.array(getattr(i, read)())) for i in (two, one))
        # the same batches in other processes: equal up to float32 rounding
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_two_rank_full_matrix_covers_every_example_once_and_equals_one_process(tiny_workspace, tmp_path):
    serial = Path(shutil.copytree(tiny_workspace, tmp_path / "serial"))
    # LiSSA with 2 repetitions: one per rank, averaged by the all-reduce; the columns sharded over both
    args = ["matrix", "--examples", TESTS, "--full", "--preset", "paper", "--depth", "10"]
    args += ["--batch-size", "2", "--repeats", "2", "--col-block", "16"]
    out = torchrun(tiny_workspace, *args)
    _, values = load_matrix(tiny_workspace, out["matrix_id"])
    n = len(LoadedWorkspace.load(serial, search=False).train_ids)
    assert out["full"] and out["shape"] == [2, n] and out["chunks"]["computed"] == out["chunks"]["total"]
    per_rank = out["columns_per_rank"]  # the columns each rank returned, summed over row blocks (one here)
    assert len(per_rank) == 2 and min(per_rank) > 0 and sum(per_rank) == n
    assert not np.isnan(values).any()  # every column was scored (an unscored one stays NaN): once each
    cfg = influence_config_from_args(build_parser().parse_args([*args, "-w", str(serial)]))
    want = influence_matrix(LoadedWorkspace.load(serial), TESTS.split(","), cfg, full=True, col_block=16)
    assert want.columns_per_rank == [] and want.train_positions == list(range(n))
    # s_test summed across two ranks in another order: a score carries float32 rounding of the largest
    # scores (~1e-6 of them), so near-zero scores are compared at that scale, not at their own
    scale = float(np.abs(want.values).max())
    torch.testing.assert_close(
        torch.from_numpy(values).double(),
        torch.from_numpy(want.values).double(),
        rtol=1e-5,
        atol=1e-5 * scale,
    )
