"""Many examples from the command line and the worker: ``fastif influence --examples`` answers each example
exactly as ``fastif influence --example`` does (real subprocesses), the other ways of naming examples, bad
input, ``fastif matrix``, and the influence_many / matrix jobs in a worker (one rank, and two ranks)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import assert_one_line_error, fastif

from fastif_core import cli, jobs
from fastif_core.config import InfluenceConfig, STestConfig
from fastif_core.jobs import ManyInfluenceParams, MatrixParams
from fastif_core.queries.examples import list_examples
from fastif_core.queries.influence import influence_query_many
from fastif_core.store import Store
from fastif_core.store import matrices as sm
from fastif_core.worker.loop import run_worker

SETTINGS = ["--k", "8", "--batch-size", "8", "--depth", "6", "--seed", "3", "--top", "3", "--device", "cpu"]
CFG = InfluenceConfig(s_test=STestConfig.default(batch_size=8, depth=6, seed=3), k=8, top=3)


def _ids(root: Path, n: int) -> list[str]:
    return [r["id"] for r in list_examples(root, split="challenge", limit=n)]


def _runs(root: Path) -> list:
    with Store.open(root) as store:
        return store.list_influence_runs(limit=100)


def _same_answer(batched: dict, single: dict) -> None:
    """Equal but for wall-clock seconds; influence values to float32 scoring round-off."""
    assert set(batched) == set(single) and set(batched["s_test"]) == set(single["s_test"])
    assert set(batched["seconds"]) == set(single["seconds"])
    for key in set(single) - {"seconds", "s_test", "helpful", "harmful"}:
        assert batched[key] == single[key], key
    for key in set(single["s_test"]) - {"seconds", "residual", "norm"}:
        assert batched["s_test"][key] == single["s_test"][key], key
    for key in ("residual", "norm"):
        assert batched["s_test"][key] == pytest.approx(single["s_test"][key], rel=1e-5)
    # other processes and batch compositions: a score carries float32 rounding of the largest scores, so
    # near-zero ones are compared at that scale
    scale = max(abs(r["influence"]) for side in ("helpful", "harmful") for r in single[side])
    for side in ("helpful", "harmful"):
        assert [r["train_id"] for r in batched[side]] == [r["train_id"] for r in single[side]]
        for a, b in zip(batched[side], single[side], strict=True):
            assert a["influence"] == pytest.approx(b["influence"], rel=1e-4, abs=1e-5 * scale)
            assert {k: v for k, v in a.items() if k != "influence"} == {
                k: v for k, v in b.items() if k != "influence"
            }


def test_examples_json_list_equals_the_single_answers(tiny_workspace, tmp_path):
    other = Path(shutil.copytree(tiny_workspace, tmp_path / "single"))
    ids = _ids(tiny_workspace, 2)
    many = fastif("influence", "-w", str(tiny_workspace), "--examples", ",".join(ids), *SETTINGS, "--json")
    assert many.returncode == 0, many.stderr
    answers = json.loads(many.stdout)
    assert [a["example_id"] for a in answers] == ids and all(not a["cached"] for a in answers)
    for example_id, batched in zip(ids, answers, strict=True):
        one = fastif("influence", "-w", str(other), "--example", example_id, *SETTINGS, "--json")
        assert one.returncode == 0, one.stderr
        _same_answer(batched, json.loads(one.stdout))
    assert {r.example_id for r in _runs(tiny_workspace)} == set(
        ids
    )  # ordinary runs: the example page finds them


def test_other_ways_to_name_examples_and_bad_input(tiny_workspace, tmp_path, capsys):
    ids = _ids(tiny_workspace, 3)
    first = influence_query_many(tiny_workspace, ids[:2], CFG)  # computed, stored
    listing = tmp_path / "ids.txt"
    listing.write_text(f"# tests\n{ids[1]}\n\n{ids[2]}  # a comment\n")
    w = ["-w", str(tiny_workspace)]
    assert cli.main(["influence", *w, "--examples-from", str(listing), *SETTINGS, "--json"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert [a["example_id"] for a in from_file] == ids[1:] and [a["cached"] for a in from_file] == [
        True,
        False,
    ]
    assert from_file[0]["helpful"] == first[1]["helpful"]
    assert cli.main(["influence", *w, "--split", "challenge", "--limit", "3", *SETTINGS, "--json"]) == 0
    assert [a["example_id"] for a in json.loads(capsys.readouterr().out)] == ids
    before = len(_runs(tiny_workspace))
    bad = [
        (["--examples", f"{ids[0]},no-such-id"], "no-such-id"),
        (["--examples", f"{ids[0]},{ids[0]}"], "twice"),
        (["--example", ids[0], "--examples", ids[1]], "--example and --examples"),
        (["--examples-from", str(tmp_path / "missing.txt")], "missing.txt"),
    ]
    for args, needle in bad:
        assert cli.main(["influence", *w, *args, *SETTINGS]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert len(_runs(tiny_workspace)) == before  # nothing computed, nothing lost


def test_matrix_command_prints_id_shape_and_timings(tiny_workspace):
    ids = _ids(tiny_workspace, 2)
    args = [
        "matrix",
        "-w",
        str(tiny_workspace),
        "--examples",
        ",".join(ids),
        *SETTINGS[2:],
        "--full",
        "--json",
    ]
    proc = fastif(*args, "--col-block", "25")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (
        out["shape"] == [2, 60]
        and out["full"]
        and out["chunks"] == {"total": 3, "computed": 3, "found_stored": 0, "derived_from_full": 0}
    )
    assert out["candidate_pairs"] == 120 and {"s_test", "scoring", "store_write", "total"} <= set(
        out["seconds"]
    )
    again = json.loads(fastif(*args, "--col-block", "25").stdout)
    assert again["cached"] and again["matrix_id"] == out["matrix_id"]
    assert_one_line_error(
        fastif("matrix", "-w", str(tiny_workspace), "--examples", "nope", "--k", "5"), "nope"
    )


def test_many_and_matrix_jobs_in_a_worker(tiny_workspace, tmp_path, capsys):
    ids = _ids(tiny_workspace, 2)
    serial = Path(shutil.copytree(tiny_workspace, tmp_path / "serial"))
    assert (
        cli.main(["submit", "influence", "-w", str(tiny_workspace), "--examples", ",".join(ids), *SETTINGS])
        == 0
    )
    assert "(influence_many): queued" in capsys.readouterr().out
    with Store.open(tiny_workspace) as store:
        matrix_job = jobs.enqueue(store, "matrix", MatrixParams(tuple(ids), CFG, row_block=1))
    assert run_worker(tiny_workspace, "cpu", once=True, poll=0.1) == 2
    with Store.open(tiny_workspace) as store:
        done = [store.get_job(j.id) for j in store.list_jobs(limit=10)]
        assert all(j.status == "done" for j in done), [(j.kind, j.error) for j in done]
        matrix = sm.get_matrix(store, store.get_job(matrix_job.id).result["matrix_id"])
        assert matrix.status == "complete" and matrix.shape == (2, len(matrix.train_positions))
    expected = influence_query_many(serial, ids, CFG)
    stored = {r.example_id: r for r in _runs(tiny_workspace)}
    assert set(stored) == set(ids) and all(r.job_id is not None for r in stored.values())
    for answer in expected:
        with Store.open(tiny_workspace) as store:
            run = store.get_influence_run(stored[answer["example_id"]].id)
        values = {s.train_id: s.value for s in run.scores}
        scale = max(
            abs(row["influence"]) for row in answer["helpful"] + answer["harmful"]
        )  # as in _same_answer
        for row in answer["helpful"] + answer["harmful"]:
            assert values[row["train_id"]] == pytest.approx(row["influence"], rel=1e-5, abs=1e-5 * scale)


@pytest.mark.slow
def test_two_ranks_answer_many_examples_like_one(tiny_workspace, tmp_path):
    """cpu:2: repetitions split across ranks, one all-reduce for all s_test vectors, candidate shards."""
    ids = _ids(tiny_workspace, 2)
    cfg = InfluenceConfig(s_test=STestConfig(depth=6, batch_size=2, repeats=3, scale=100.0), k=8, top=0)
    serial = influence_query_many(Path(shutil.copytree(tiny_workspace, tmp_path / "serial")), ids, cfg)
    with Store.open(tiny_workspace) as store:
        jobs.enqueue(store, "influence_many", ManyInfluenceParams(tuple(ids), cfg))
    assert run_worker(tiny_workspace, "cpu:2", once=True, poll=0.1) == 1
    for answer in serial:
        with Store.open(tiny_workspace) as store:
            (found,) = store.list_influence_runs(example_id=answer["example_id"])
            run = store.get_influence_run(found.id)
        assert run.s_test_stats["ranks"] == 2 and run.s_test_stats["repetitions"] == 3
        values = {s.train_id: s.value for s in run.scores}
        scale = max(
            abs(row["influence"]) for row in answer["helpful"] + answer["harmful"]
        )  # as in _same_answer
        for row in answer["helpful"] + answer["harmful"]:
            assert values[row["train_id"]] == pytest.approx(row["influence"], rel=1e-5, abs=1e-5 * scale)


def test_a_matrix_job_on_two_ranks_equals_the_serial_matrix(tiny_workspace, tmp_path):
    """cpu:2: each row block of a kNN matrix is one query of the group (repetitions split, the block's kNN
    union sharded over both ranks), NaN outside each test's own k, equal to the matrix of one process."""
    from fastif_core.queries.matrix import influence_matrix, load_matrix
    from fastif_core.workspace.layout import LoadedWorkspace

    ids = _ids(tiny_workspace, 3)
    cfg = InfluenceConfig(s_test=STestConfig(depth=6, batch_size=2, repeats=2, scale=100.0), k=8, top=0)
    serial = Path(shutil.copytree(tiny_workspace, tmp_path / "serial"))
    want = influence_matrix(LoadedWorkspace.load(serial), ids, cfg, row_block=2, col_block=8)
    with Store.open(tiny_workspace) as store:
        queued = jobs.enqueue(store, "matrix", MatrixParams(tuple(ids), cfg, row_block=2, col_block=8))
    assert run_worker(tiny_workspace, "cpu:2", once=True, poll=0.1) == 1
    with Store.open(tiny_workspace) as store:
        done = store.get_job(queued.id)
    assert done.status == "done", done.error
    info, values = load_matrix(tiny_workspace, done.result["matrix_id"])
    assert info.train_positions == want.train_positions and info.timings["chunks_computed"] == len(
        info.blocks()
    )
    per_rank = info.timings["columns_per_rank"]  # over the 2 row blocks, each scoring the whole kNN union
    assert len(per_rank) == 2 and min(per_rank) > 0 and sum(per_rank) == 2 * len(info.train_positions)
    assert np.array_equal(np.isnan(values), np.isnan(want.values))  # the same candidate pairs
    scale = float(np.nanmax(np.abs(want.values)))  # as in _same_answer: float32 rounding of the largest
    torch.testing.assert_close(
        torch.from_numpy(values).double(),
        torch.from_numpy(want.values).double(),
        rtol=1e-5,
        atol=1e-5 * scale,
        equal_nan=True,
    )
