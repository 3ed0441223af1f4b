"""``fastif bench --section sketch`` on the built-in corpus's tiny workspace: every part runs, the stacked
build's indexes are complete, a full-dimension orthogonal sketch on the exact path's seeded batch agrees
with the exact ``--full`` reference (the bench measures what it claims), and a small sketch agrees less."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_sketch_section_on_the_tiny_workspace(tiny_workspace, tmp_path):
    out = tmp_path / "bench"
    args = [
        "--section",
        "sketch",
        "--test-examples",
        "4",
        "--sketch-ks",
        "2,100000",
        "--sketch-projections",
        "orthogonal",
        "--sketch-small-k",
        "0",
        "--sketch-mc-k",
        "2",
        "--sketch-click-k",
        "2",
        "--sketch-recall-ks",
        "5,20",
        "--sketch-matrix-tests",
        "3",
        "--sketch-time-examples",
        "4",
        "--sketch-reference",
        "gauss_newton_direct",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "fastif_core", "bench", "-w", str(tiny_workspace), "--out", str(out), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((out / "sketch.json").read_text())
    assert len(result["settings"]["tests"]) == 4 and set(result) >= {"reference", "build", "compare", "click"}
    built = result["build"]["variants"]
    assert (
        all(v["status"] == "complete" for v in built.values())
        and built["o2"]["dim"] < built["o100000"]["dim"]
    )
    assert result["build"]["single"]["exact"]["seconds"] > 0 and built["g2-mc"]["rows_per_example"] == 1
    full = result["compare"]["variants"]["o100000/gauss_newton-seeded"]
    assert full["dim"] == result["settings"]["trainable_params"]
    # float32 model and sketches; the reference is the exact direct solve on the same seeded batch
    assert full["float32"]["all"]["pearson"] > 0.9999 and full["float32"]["all"]["top10_helpful"] >= 0.9
    small = result["compare"]["variants"]["o2/gauss_newton-seeded"]["float32"]["all"]
    assert small["pearson"] < full["float32"]["all"]["pearson"]
    assert {"sketch_k20_helpful", "knn_k20_helpful", "sketch_abs_k5_harmful"} <= set(small)
    click = result["click"]
    assert click["matrix"]["shape"] == [3, result["settings"]["num_train"]] and len(click["clicks"]) == 2
    assert "| o100000/gauss_newton-seeded |" in run.stdout  # the printed table
