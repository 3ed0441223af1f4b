"""The ``fastif`` command line end to end, as a user runs it: real subprocesses, real workspace files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from factories import save_tiny_checkpoint

TINY_PREPARE = [
    "--demo-size",
    "60",
    "--holdout",
    "0",
    "--epochs",
    "1",
    "--max-length",
    "48",
    "--batch-size",
    "16",
]
FAST = ["--k", "15", "--depth", "15", "--top", "3", "--device", "cpu"]


def fastif(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "fastif_core", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def cli_workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    model = save_tiny_checkpoint(root / "base")
    ws = root / "ws"
    proc = fastif("prepare", "--workspace", str(ws), "--train", "demo", "--model", str(model), *TINY_PREPARE)
    assert proc.returncode == 0, proc.stderr
    assert "workspace ready (built" in proc.stdout
    assert "demo-hans/challenge" in proc.stdout  # accuracy per eval set
    assert "heuristic=lexical_overlap" in proc.stdout  # ... and per slice
    return ws


def test_help_of_every_command():
    top = fastif("--help")
    assert top.returncode == 0
    for command in ("prepare", "examples", "influence", "worker", "submit", "jobs", "bench", "corpus"):
        assert command in top.stdout
        sub = fastif(command, "--help")
        assert sub.returncode == 0, sub.stderr
        assert "--" in sub.stdout  # documents its options


def test_prepare_twice_reuses(cli_workspace: Path):
    model = cli_workspace.parent / "base"
    proc = fastif(
        "prepare",
        "--workspace",
        str(cli_workspace),
        "--train",
        "demo",
        "--model",
        str(model),
        *TINY_PREPARE,
        "--sketches",
        "always",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["reused"] is True and manifest["status"] == "ready"
    sketch = manifest["sketch"]  # --sketches always: the default index, finished after the prepare
    assert sketch["status"] == "complete" and sketch["blocks"]["done"] == sketch["blocks"]["total"]
    assert Path(sketch["path"]).is_relative_to(cli_workspace / "sketches")


def test_examples_json_lists_labels_and_predictions(cli_workspace: Path):
    proc = fastif(
        "examples", "--workspace", str(cli_workspace), "--split", "challenge", "--limit", "7", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["examples"]
    assert len(rows) == 7
    for row in rows:
        assert row["split"] == "challenge" and row["dataset"] == "demo-hans"
        assert row["label"] in ("entailment", "non-entailment")
        assert row["predicted"] in ("entailment", "non-entailment")
        assert {"heuristic", "subcase"} <= set(row)
    wrong = json.loads(
        fastif("examples", "-w", str(cli_workspace), "--incorrect", "--limit", "50", "--json").stdout
    )
    assert all(r["predicted"] != r["label"] for r in wrong["examples"])


def test_influence_end_to_end_then_cached(cli_workspace: Path):
    ex = json.loads(
        fastif("examples", "-w", str(cli_workspace), "--split", "challenge", "--limit", "1", "--json").stdout
    )["examples"][0]["id"]
    first = fastif("influence", "-w", str(cli_workspace), "--example", ex, *FAST, "--json")
    assert first.returncode == 0, first.stderr
    a = json.loads(first.stdout)
    assert a["example_id"] == ex and a["num_candidates"] == 15 and a["cached"] is False
    assert set(a["seconds"]) >= {"knn", "s_test", "scoring", "total"}
    assert a["config"]["k"] == 15 and a["config"]["s_test"]["depth"] == 15
    assert 0 < len(a["helpful"]) <= 3 and all(r["influence"] < 0 for r in a["helpful"])
    assert all(r["influence"] > 0 for r in a["harmful"])
    assert {"train_id", "influence", "premise", "hypothesis", "label"} <= set(a["helpful"][0])
    second = json.loads(
        fastif("influence", "-w", str(cli_workspace), "--example", ex, *FAST, "--json").stdout
    )
    assert second["cached"] is True
    assert second["helpful"] == a["helpful"] and second["harmful"] == a["harmful"]
    every = json.loads(
        fastif(
            "influence", "-w", str(cli_workspace), "--example", ex, *FAST[:-4], "--top", "0", "--json"
        ).stdout
    )
    assert every["cached"] is True  # top only selects what is shown
    assert len(every["helpful"]) + len(every["harmful"]) == 15


def test_errors_are_one_clear_line(cli_workspace: Path, tmp_path: Path):
    unknown = fastif("influence", "-w", str(cli_workspace), "--example", "no-such-id", *FAST)
    assert_one_line_error(unknown, "no-such-id", "fastif examples")
    too_many = fastif(
        "influence", "-w", str(cli_workspace), "--example", "demo-hans:challenge:ex0", "--k", "100000"
    )
    assert_one_line_error(too_many, "k=100000", "training set")
    missing = fastif("examples", "-w", str(tmp_path / "nowhere"))
    assert_one_line_error(missing, "does not exist", "fastif prepare")
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence1\tsentence2\tgold_label\nA man.\tA person.\tmaybe\n")
    bad_file = fastif("prepare", "-w", str(tmp_path / "ws"), "--train", str(bad), *TINY_PREPARE)
    assert_one_line_error(bad_file, "bad.tsv", "maybe")
    depth0 = fastif(
        "influence", "-w", str(cli_workspace), "--example", "demo-hans:challenge:ex0", "--depth", "0"
    )
    assert_one_line_error(depth0, "depth")


def test_corpus_writes_hans_format(tmp_path: Path):
    out = tmp_path / "heuristics_evaluation_set.txt"
    proc = fastif("corpus", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    header = out.read_text().splitlines()[0].split("\t")
    assert header[:1] == ["gold_label"] and "heuristic" in header and "subcase" in header


def test_generated_training_file_prepared_with_a_fit_subset(tmp_path: Path):
    """`fastif corpus --train-size` then `fastif prepare --train FILE --fit-subset`, twice: the second is a
    no-op; the manifest names both sizes."""
    train = tmp_path / "train.tsv"
    assert fastif("corpus", "--train-size", "80", "--out", str(train)).returncode == 0
    model = save_tiny_checkpoint(tmp_path / "base")
    args = ["prepare", "-w", str(tmp_path / "ws"), "--train", str(train), "--model", str(model)]
    args += [*TINY_PREPARE[2:], "--fit-subset", "20", "--sketches", "never", "--device", "cpu"]
    first = fastif(*args)
    assert first.returncode == 0, first.stderr
    assert "80 training examples (the model fine-tuned on 20)" in first.stdout
    again = fastif(*args, "--json")
    manifest = json.loads(again.stdout[: again.stdout.rindex("}") + 1])
    assert manifest["reused"] is True and (manifest["num_train"], manifest["num_fit"]) == (80, 20)


def test_real_mnli_end_to_end(mnli_dev_path: Path, tmp_path: Path):
    """A subset of the real MNLI dev file: prepare (tiny model), then one influence query on held-out data."""
    model = save_tiny_checkpoint(tmp_path / "base")
    ws = tmp_path / "mnli"
    proc = fastif(
        "prepare",
        "-w",
        str(ws),
        "--train",
        str(mnli_dev_path),
        "--max-train",
        "80",
        "--holdout",
        "0.005",
        "--model",
        str(model),
        "--epochs",
        "1",
        "--max-length",
        "64",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["num_train"] == 80
    (name,) = [n for n in manifest["accuracy"] if n.endswith("/heldout")]
    assert manifest["accuracy"][name]["n"] == 49  # 0.5% of 9,815
    assert set(manifest["accuracy"][name]["slices"]["label"]) <= {"entailment", "neutral", "contradiction"}
    held = json.loads(
        fastif("examples", "-w", str(ws), "--split", "heldout", "--limit", "1", "--json").stdout
    )
    ex = held["examples"][0]["id"]
    ans = fastif("influence", "-w", str(ws), "--example", ex, *FAST, "--json")
    assert ans.returncode == 0, ans.stderr
    result = json.loads(ans.stdout)
    assert result["num_candidates"] == 15
    assert all(
        r["label"] in ("entailment", "neutral", "contradiction")
        for r in result["helpful"] + result["harmful"]
    )


def test_presets_and_solver_flags_reach_the_engine(cli_workspace: Path):
    ex = "demo-hans:challenge:ex1"
    default = json.loads(
        fastif("influence", "-w", str(cli_workspace), "--example", ex, *FAST, "--json").stdout
    )
    s = default["s_test"]
    assert s["solver"] == "cg" and s["curvature"] == "gauss_newton" and s["effective_damping"] == 50.0
    assert 1 <= s["hvps"] <= 15 and s["residual"] is not None and s["converged"] in (True, False)
    assert default["config"]["gradient_l2"] == "none"
    paper = json.loads(
        fastif(
            "influence", "-w", str(cli_workspace), "--example", ex, "--preset", "paper", *FAST, "--json"
        ).stdout
    )
    p = paper["s_test"]
    assert p["solver"] == "lissa" and p["batch_size"] == 1 and p["hvps"] == 15 and p["scale"] == 1e4
    assert (
        paper["config"]["s_test"]["depth"] == 15 and paper["cached"] is False
    )  # another setting, another run
    fastif_l2 = json.loads(
        fastif(
            "influence",
            "-w",
            str(cli_workspace),
            "--example",
            ex,
            "--gradient-l2",
            "test_and_train",
            *FAST,
            "--json",
        ).stdout
    )
    assert fastif_l2["cached"] is False and fastif_l2["config"]["gradient_l2"] == "test_and_train"
    bad = fastif("influence", "-w", str(cli_workspace), "--example", ex, "--solver", "newton", *FAST)
    assert_one_line_error(bad, "solver='newton'", "lissa | cg")


def test_submit_is_keyed_by_the_served_model(tiny_workspace: Path, capsys):
    """`fastif submit influence` carries the workspace's model id: after a re-prepare the same request is
    a new job, and the worker fails the old one clearly instead of answering for another model."""
    import dataclasses

    from factories import tiny_prepare_config

    from fastif_core.cli import main
    from fastif_core.store import Store
    from fastif_core.worker.loop import run_worker
    from fastif_core.workspace.layout import read_manifest
    from fastif_core.workspace.prepare import prepare

    args = [
        "submit",
        "influence",
        "-w",
        str(tiny_workspace),
        "--example",
        "demo-hans:challenge:ex1",
        "--k",
        "5",
        "--depth",
        "2",
        "--json",
    ]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    old_model = read_manifest(tiny_workspace)["model_id"]
    assert first["params"]["model_id"] == old_model
    cfg = tiny_prepare_config(Path(read_manifest(tiny_workspace)["prepare_config"]["model"]))
    cfg = dataclasses.replace(cfg, train_config=dataclasses.replace(cfg.train_config, seed=3))
    new_model = prepare(tiny_workspace, cfg, show_progress=False)["model_id"]
    assert new_model != old_model
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["id"] != first["id"] and second["params"]["model_id"] == new_model
    assert run_worker(tiny_workspace, "cpu:1", once=True, poll=0.1) == 2
    with Store.open(tiny_workspace) as store:
        old_job, new_job = store.get_job(first["id"]), store.get_job(second["id"])
        assert old_job.status == "failed" and f"model_id={old_model}" in old_job.error
        assert new_job.status == "done"
        run = store.get_influence_run(new_job.result["influence_run_id"])
        assert run.model_id == new_model
