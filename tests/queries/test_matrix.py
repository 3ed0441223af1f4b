"""Influence matrices: kNN-union and full matrices equal single queries, an interrupted run resumes from its
stored blocks, the store's block layout works on SQLite and PostgreSQL, and revision 0004 upgrades 0003."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from sqlalchemy import text

from fastif_core.config import InfluenceConfig, STestConfig
from fastif_core.engine.influence import compute_influence, test_gradients
from fastif_core.engine.scoring import score_many
from fastif_core.engine.solvers import solve_many
from fastif_core.errors import ConfigError, LeaseLostError, WorkspaceError
from fastif_core.queries.examples import list_examples
from fastif_core.queries.matrix import influence_matrix
from fastif_core.store import Store
from fastif_core.store import engine as eng
from fastif_core.store import matrices as sm
from fastif_core.workspace.layout import LoadedWorkspace

CFG = InfluenceConfig(s_test=STestConfig.default(batch_size=8, depth=10, seed=3), k=10, top=0)


@pytest.fixture
def loaded(tiny_workspace) -> LoadedWorkspace:
    return LoadedWorkspace.load(tiny_workspace, "cpu")


def _ids(loaded: LoadedWorkspace, n: int) -> list[str]:
    return [r["id"] for r in list_examples(loaded.root, split="challenge", limit=n)]


def _record(loaded: LoadedWorkspace, example_id: str):
    with Store.open(loaded.root) as store:
        return store.get_example(example_id, loaded.model_id).to_record()


def test_knn_matrix_rows_equal_single_queries_and_are_stored_once(loaded):
    ids = _ids(loaded, 3)
    out = influence_matrix(loaded, ids, CFG, row_block=2, col_block=7)
    assert out.test_ids == ids and out.values.dtype == np.float32 and out.chunks["computed"] == 8
    assert (
        out.train_ids == [loaded.train_ids[p] for p in out.train_positions]
        and out.model_id == loaded.model_id
    )
    for m, test_id in enumerate(ids):
        positions = loaded.nearest(test_id, CFG.k)[0]
        single = compute_influence(
            loaded.objective, loaded.encode_test(_record(loaded, test_id)), loaded.train, positions, CFG
        )
        cols = [out.train_positions.index(p) for p in positions]
        np.testing.assert_allclose(
            out.values[m, cols],
            single.values.numpy(),
            rtol=1e-4,
            atol=1e-4 * float(single.values.abs().max()),
        )
        others = np.setdiff1d(np.arange(out.shape[1]), cols)
        assert np.isnan(out.values[m, others]).all()  # not a candidate of this test: NaN
    again = influence_matrix(loaded, ids, CFG, row_block=2, col_block=7)
    assert again.cached and again.matrix_id == out.matrix_id and again.chunks["computed"] == 0
    np.testing.assert_array_equal(again.values, out.values)
    with Store.open(loaded.root) as store:
        assert [m.id for m in sm.list_matrices(store, loaded.model_id)] == [out.matrix_id]


class Interrupt(Exception):
    pass


def test_interrupted_full_matrix_resumes_from_its_stored_blocks(loaded):
    ids = _ids(loaded, 2)
    stored: list[str] = []

    def kill_after_three(fraction: float, message: str) -> None:
        if message.startswith("stored block"):
            stored.append(message)
            if len(stored) == 3:
                raise Interrupt

    with pytest.raises(Interrupt):
        influence_matrix(loaded, ids, CFG, full=True, row_block=1, col_block=16, progress=kill_after_three)
    with Store.open(loaded.root) as store:
        (info,) = sm.list_matrices(store)
        assert info.status == "running" and len(sm.stored_chunks(store, info.id)) == 3
    seen: list[float] = []
    out = influence_matrix(
        loaded, ids, CFG, full=True, row_block=1, col_block=16, progress=lambda f, _msg: seen.append(f)
    )
    assert out.chunks == {"total": 8, "computed": 5, "found_stored": 3, "derived_from_full": 0}
    assert not out.cached
    assert out.shape == (2, len(loaded.train_ids)) and out.full and not np.isnan(out.values).any()
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)
    v = test_gradients(loaded.objective, [loaded.encode_test(_record(loaded, i)) for i in ids])
    s = solve_many(loaded.objective, v, loaded.train, CFG.s_test).s_test
    reference = score_many(loaded.objective, s, loaded.train, range(len(loaded.train_ids)), method="jvp")
    np.testing.assert_allclose(
        out.values, reference.numpy(), rtol=1e-4, atol=1e-4 * float(reference.abs().max())
    )
    # the stored full matrix answers a kNN matrix of the same tests and settings: no model work
    knn = influence_matrix(
        loaded, ids, CFG, row_block=1, col_block=16, progress=lambda f, msg: pytest.fail(f"computed: {msg}")
    )
    assert knn.chunks["computed"] == 0 and knn.chunks["derived_from_full"] == knn.chunks["total"] > 0
    for m, test_id in enumerate(ids):
        positions = loaded.nearest(test_id, CFG.k)[0]
        cols = [knn.train_positions.index(p) for p in positions]
        np.testing.assert_array_equal(knn.values[m, cols], out.values[m, positions])
        assert np.isnan(np.delete(knn.values[m], cols)).all()
    again = influence_matrix(loaded, ids, CFG, row_block=1, col_block=16)
    assert again.cached and again.matrix_id == knn.matrix_id
    np.testing.assert_array_equal(again.values, knn.values)


def test_a_full_matrix_of_other_settings_or_another_test_order_does_not_answer_a_knn_matrix(loaded):
    """Only the full matrix of the same tests in the same order and the same settings may answer a kNN
    matrix: another depth, or the tests reversed (its rows would land on the wrong tests), is computed."""
    ids = _ids(loaded, 2)
    full = influence_matrix(loaded, ids, CFG, full=True, row_block=1, col_block=64)
    deeper = replace(CFG, s_test=replace(CFG.s_test, depth=CFG.s_test.depth + 5))
    other = influence_matrix(loaded, ids, deeper, row_block=1, col_block=16)
    assert other.chunks["derived_from_full"] == 0 and other.chunks["computed"] == other.chunks["total"] > 0
    reversed_ids = ids[::-1]
    rev = influence_matrix(loaded, reversed_ids, CFG, row_block=1, col_block=16)
    assert rev.test_ids == reversed_ids
    assert rev.chunks["derived_from_full"] == 0 and rev.chunks["computed"] == rev.chunks["total"] > 0
    for m, test_id in enumerate(reversed_ids):  # row m is the m-th test of its own order
        positions = loaded.nearest(test_id, CFG.k)[0]
        cols = [rev.train_positions.index(p) for p in positions]
        want = full.values[ids.index(test_id), positions]
        # scored afresh in other column batches: float32 rounding of the largest scores
        np.testing.assert_allclose(
            rev.values[m, cols], want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max())
        )
    same = influence_matrix(loaded, ids, CFG, row_block=1, col_block=16)  # the control: derived, no work
    assert same.chunks["computed"] == 0 and same.chunks["derived_from_full"] == same.chunks["total"] > 0


DIRECT = InfluenceConfig(s_test=STestConfig.gauss_newton_direct(batch_size=8, seed=3), k=10, top=0)


@pytest.mark.parametrize("cfg", [CFG, DIRECT], ids=["cg_in_parts", "direct_in_place"])
def test_a_row_block_solved_in_parts_equals_one_solve(loaded, monkeypatch, cfg):
    """s_test of a row block -- in parts of SOLVE_BLOCK tests (CG: the solver's memory), or the whole block
    in place in its buffer (direct) -- equals one batched solve of the same tests."""
    import fastif_core.queries.matrix as matrix_module

    ids = _ids(loaded, 3)
    monkeypatch.setattr(matrix_module, "SOLVE_BLOCK", 2)  # parts of 2 + 1 tests in a row block of 3
    out = influence_matrix(loaded, ids, cfg, full=True, row_block=3, col_block=64)
    v = test_gradients(loaded.objective, [loaded.encode_test(_record(loaded, i)) for i in ids])
    s = solve_many(loaded.objective, v, loaded.train, cfg.s_test).s_test
    reference = score_many(loaded.objective, s, loaded.train, range(len(loaded.train_ids)), method="jvp")
    np.testing.assert_allclose(
        out.values, reference.numpy(), rtol=1e-4, atol=1e-5 * float(reference.abs().max())
    )


def test_bad_requests_fail_before_any_work(loaded):
    ids = _ids(loaded, 2)
    for bad, match in (([ids[0], ids[0]], "twice"), ([], "empty"), ([ids[0], "nope"], "nope")):
        with pytest.raises((ConfigError, WorkspaceError), match=match):
            influence_matrix(loaded, bad, CFG)
    with pytest.raises(ConfigError, match="row_block"):
        influence_matrix(loaded, ids, CFG, row_block=0)
    with pytest.raises(ConfigError, match="k=1000"):
        influence_matrix(loaded, ids, InfluenceConfig(k=1000))
    with Store.open(loaded.root) as store:
        assert sm.list_matrices(store) == []


def _model(store: Store) -> int:
    return store.get_or_create_model("m", "ckpt", {"lr": 1}, ["a", "b"]).id


def test_block_layout_round_trip_and_job_completion(store):
    model_id = _model(store)
    args = {
        "model_id": model_id,
        "test_ids": ["t1", "t2", "t3"],
        "train_positions": [4, 0, 9, 2, 7],
        "config": {"k": 3, "full": False},
        "full": False,
        "row_block": 2,
        "col_block": 3,
    }
    info = sm.start_matrix(store, **args)
    assert (
        info.shape == (3, 5)
        and info.blocks() == [(0, 0), (0, 3), (2, 0), (2, 3)]
        and info.status == "running"
    )
    values = np.arange(15, dtype=np.float32).reshape(3, 5) / 7
    values[1, 2] = np.nan
    for r, c in info.blocks()[:3]:
        sm.save_chunk(store, info.id, r, c, values[r : r + 2, c : c + 3])
    sm.save_chunk(store, info.id, 0, 0, np.zeros((2, 3)))  # a retried write keeps the stored block
    partial = sm.read_values(store, info.id)
    np.testing.assert_array_equal(partial[:2], values[:2])
    assert np.isnan(partial[2, 3:]).all() and sm.stored_chunks(store, info.id) == {(0, 0), (0, 3), (2, 0)}
    assert sm.start_matrix(store, **args).id == info.id  # same key: the same matrix, blocks kept
    job = store.enqueue_job("matrix", {"x": 1}, params_hash="h")
    store.claim_job("w1")
    sm.save_chunk(store, info.id, 2, 3, values[2:, 3:])
    with pytest.raises(LeaseLostError):
        sm.complete_matrix(store, info.id, {"total": 1.0}, job_id=job.id, owner="someone else")
    assert sm.get_matrix(store, info.id).status == "running"
    done = sm.complete_matrix(store, info.id, {"total": 1.0}, job_id=job.id, owner="w1")
    assert done.status == "complete" and store.get_job(job.id).result == {"matrix_id": info.id}
    np.testing.assert_array_equal(sm.read_values(store, info.id), values)
    moved = sm.start_matrix(store, **{**args, "test_ids": ["t1"], "train_positions": [1, 2]})
    assert moved.id != info.id  # other test ids: another matrix
    relaid = sm.start_matrix(store, **{**args, "test_ids": ["t1"], "col_block": 1})
    assert (
        relaid.id == moved.id and relaid.col_block == 1 and relaid.train_positions == args["train_positions"]
    )


def test_revision_0004_upgrades_a_database_at_0003(db_url):
    old = eng.make_engine(db_url)
    eng.upgrade(old, "0003")
    with old.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO models (id, name, checkpoint_path, train_config, config_hash, metrics, "
                "label_names, created_at, lineage, active) VALUES (1, 'm', 'ckpt', '{}', 'c1', '{}', "
                "'[]', :t, '{}', TRUE)"
            ),
            {"t": "2026-12-01 00:00:00"},
        )
    old.dispose()
    with Store.open(url=db_url) as st:
        assert st.revision() == eng.head_revision() and st.get_model(1).name == "m"
        info = sm.start_matrix(
            st,
            model_id=1,
            test_ids=["a"],
            train_positions=[0, 1],
            config={},
            full=True,
            row_block=1,
            col_block=2,
        )
        sm.save_chunk(st, info.id, 0, 0, np.array([[1.5, -2.0]]))
        np.testing.assert_array_equal(sm.read_values(st, info.id), [[1.5, -2.0]])
