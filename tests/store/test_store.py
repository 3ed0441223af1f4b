"""Store: schema and migrations, idempotent writes, filters against ground truth, atomic results."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError

from fastif_core.config import InfluenceConfig, config_hash, to_dict
from fastif_core.data.records import NLIExample
from fastif_core.errors import LeaseLostError, WorkspaceError
from fastif_core.store import ExampleFilter, PredictionIn, Store, head_revision
from fastif_core.store import engine as eng
from fastif_core.store.jobs_queue import _claimable
from fastif_core.store.schema import Base, utcnow

MNLI = ("entailment", "neutral", "contradiction")
GENRES = ("fiction", "slate", "travel")
HEURISTICS = ("lexical_overlap", "subsequence", "constituent")


def make_examples(seed: int = 0) -> list[NLIExample]:
    """30 MNLI-like and 24 HANS-like examples with slices, deterministic for a seed."""
    rng = random.Random(seed)
    mnli = [
        NLIExample(
            f"mnli:dev:{i}",
            f"A premise {i} about {GENRES[i % 3]}.",
            f"Hypothesis {i}.",
            MNLI[rng.randrange(3)],
            "mnli",
            "dev",
            {"genre": GENRES[i % 3]},
        )
        for i in range(30)
    ]
    hans = [
        NLIExample(
            f"hans:eval:{i}",
            f"The doctor {i} saw the lawyer.",
            f"The lawyer saw the doctor {i}.",
            ("entailment", "non-entailment")[i % 2],
            "hans",
            "eval",
            {"heuristic": HEURISTICS[i % 3], "subcase": f"sub_{i % 4}", "template": f"t{i % 5}"},
            {"note": "x"},
        )
        for i in range(24)
    ]
    return mnli + hans


@pytest.fixture
def filled(store):
    """A store with examples, a model and its predictions; returns (store, examples, model, predictions)."""
    exs = make_examples()
    store.add_examples(exs)
    model = store.get_or_create_model("tiny", "/ckpt", {"epochs": 1}, MNLI)
    rng = random.Random(1)
    preds = {}
    for ex in exs[:-4]:  # the last 4 HANS examples have no prediction
        probs = [rng.random() for _ in range(3)]
        label = MNLI[max(range(3), key=probs.__getitem__)]
        label = (
            label if ex.dataset == "mnli" else ("entailment" if label == "entailment" else "non-entailment")
        )
        preds[ex.id] = PredictionIn(ex.id, [p / sum(probs) for p in probs], label, label == ex.label)
    store.save_predictions(model.id, preds.values())
    return store, exs, model, preds


def test_open_sets_sqlite_pragmas_and_head_revision(tmp_path):
    store = Store.open(tmp_path / "ws")
    assert store.url.endswith("ws/fastif.db") and (tmp_path / "ws" / "fastif.db").exists()
    assert store.revision() == head_revision() == "0007"
    with store.session() as s:
        assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert s.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert s.execute(text("PRAGMA busy_timeout")).scalar() == eng.BUSY_TIMEOUT_MS


def test_url_from_argument_and_environment(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv(eng.ENV_URL, url)
    assert eng.resolve_url(tmp_path / "ws") == url
    with Store.open(tmp_path / "ws") as st:
        st.upsert_dataset("d")
    assert (tmp_path / "elsewhere.db").exists() and not (tmp_path / "ws" / "fastif.db").exists()
    monkeypatch.delenv(eng.ENV_URL)
    assert eng.resolve_url(tmp_path, "sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(WorkspaceError, match="FASTIF_DB_URL"):
        eng.resolve_url(None)


def test_migrations_create_exactly_the_orm_schema(store):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_database_of_first_migration_opens_and_upgrades(db_url):
    url = db_url
    old = eng.make_engine(url)
    eng.upgrade(old, "0001")
    assert eng.current_revision(old) == "0001" and "workers" not in inspect(old).get_table_names()
    now = utcnow().replace(tzinfo=None)
    with old.begin() as conn:  # rows written by a version that only knew revision 0001
        conn.execute(
            text("INSERT INTO datasets VALUES (1, 'mnli', 'mnli3', '[]', 'demo', '{}', 1, :t)"), {"t": now}
        )
        conn.execute(
            text(
                "INSERT INTO examples (id, dataset_id, split, premise, hypothesis, label, slices, extra) "
                "VALUES ('e1', 1, 'dev', 'p', 'h', 'neutral', '{}', '{}')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO jobs (kind, params, params_hash, dedup_key, status, priority, attempts, "
                "max_attempts, progress, message, cancel_requested, created_at) VALUES ('influence', "
                "'{}', 'h1', 'h1', 'queued', 0, 0, 3, 0, '', FALSE, :t)"
            ),
            {"t": now},
        )
        conn.execute(
            text(
                "INSERT INTO models (id, name, checkpoint_path, train_config, config_hash, metrics, "
                "label_names, created_at) VALUES (1, 'm', 'model', '{}', 'c1', '{}', '[]', :t)"
            ),
            {"t": now},
        )
        conn.execute(
            text(
                "INSERT INTO predictions (model_id, example_id, probs, predicted, confidence, correct) "
                "VALUES (1, 'e1', '[1.0]', 'neutral', 1.0, TRUE)"
            )
        )
    old.dispose()
    with Store.open(url=url) as st:
        assert st.revision() == "0007"
        assert st.get_example("e1").label == "neutral"
        # upgrading keeps what older versions stored (no table rebuild cascading into predictions)
        assert st.get_example("e1", 1).predicted == "neutral" and st.get_example("e1", 1).correct is True
        assert st.claim_job("w").params_hash == "h1"
        assert st.worker_heartbeat("w", pid=1).status == "running"
        assert "ix_jobs_claim" in {ix["name"] for ix in inspect(st.engine).get_indexes("jobs")}


def test_database_from_a_newer_version_is_refused(tmp_path):
    with Store.open(tmp_path) as st, st.transaction() as s:
        s.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(WorkspaceError, match="cannot migrate"):
        Store.open(tmp_path)


def test_add_examples_is_idempotent_and_updates_in_place(store):
    exs = make_examples()
    assert store.add_examples(exs) == len(exs)
    store.add_examples(exs)
    assert store.count_examples() == len(exs)
    assert {d.name: d.counts for d in store.list_datasets()} == {"hans": {"eval": 24}, "mnli": {"dev": 30}}
    moved = NLIExample(exs[0].id, exs[0].premise, exs[0].hypothesis, exs[0].label, "mnli", "heldout", {})
    store.add_examples([moved])
    row = store.get_example(moved.id)
    assert (row.split, row.slices, row.genre) == ("heldout", {}, None)
    assert store.get_dataset("mnli").counts == {"dev": 29, "heldout": 1}
    assert row.to_record() == moved
    hans = store.get_example("hans:eval:5")
    assert (hans.heuristic, hans.subcase, hans.extra) == ("constituent", "sub_1", {"note": "x"})


def test_upsert_dataset_keeps_unspecified_fields(store):
    store.upsert_dataset("hans", label_scheme="hans2", labels=["entailment", "non-entailment"], source="demo")
    info = store.upsert_dataset("hans", source="file.txt")
    assert (info.label_scheme, info.labels, info.source) == (
        "hans2",
        ["entailment", "non-entailment"],
        "file.txt",
    )


def _expected(exs, preds, **f):
    """Ground truth for a filter, computed in Python from the records."""
    out = []
    for ex in exs:
        p = preds.get(ex.id)
        checks = [
            f.get("dataset") in (None, ex.dataset),
            f.get("label") is None or ex.label in f["label"],
            f.get("genre") in (None, ex.slices.get("genre")),
            f.get("heuristic") in (None, ex.slices.get("heuristic")),
            f.get("correct") is None or (p is not None and p.correct == f["correct"]),
            f.get("predicted") is None or (p is not None and p.predicted == f["predicted"]),
            f.get("search") is None or f["search"].lower() in (ex.premise + ex.hypothesis + ex.id).lower(),
        ]
        if all(checks):
            out.append(ex.id)
    return sorted(out)


@pytest.mark.parametrize(
    "f",
    [
        {},
        {"dataset": "mnli"},
        {"dataset": "hans", "correct": False},
        {"genre": "slate", "correct": True},
        {"heuristic": "subsequence"},
        {"label": ("neutral", "contradiction")},
        {"predicted": "non-entailment"},
        {"search": "DOCTOR 1"},
        {"dataset": "mnli", "search": "fiction", "correct": False},
    ],
)
def test_filters_and_summary_match_ground_truth(filled, f):
    store, exs, model, preds = filled
    want = _expected(exs, preds, **f)
    got = store.query_examples(ExampleFilter(**f), limit=None)
    assert sorted(r.id for r in got) == want
    summary = store.summarize_examples(**f)
    with_pred = [i for i in want if i in preds]
    assert (summary.count, summary.predicted, summary.correct) == (
        len(want),
        len(with_pred),
        sum(preds[i].correct for i in with_pred),
    )
    for r in got:
        assert (r.predicted, r.correct) == (
            (preds[r.id].predicted, preds[r.id].correct) if r.id in preds else (None, None)
        )


def test_summary_by_group_and_distinct_values(filled):
    store, exs, _, preds = filled
    groups = {g.value: g for g in store.summarize_by("heuristic", dataset="hans")}
    for h in HEURISTICS:
        ids = [e.id for e in exs if e.slices.get("heuristic") == h]
        assert groups[h].count == len(ids)
        assert groups[h].correct == sum(preds[i].correct for i in ids if i in preds)
    assert store.distinct_values("genre") == sorted(GENRES)
    assert store.distinct_values("dataset") == ["hans", "mnli"]
    assert store.distinct_values("subcase", heuristic="lexical_overlap") == [
        "sub_0",
        "sub_1",
        "sub_2",
        "sub_3",
    ]
    assert set(store.distinct_values("predicted", dataset="hans")) <= {"entailment", "non-entailment"}


def test_order_paging_and_search_escaping(filled):
    store, exs, _, preds = filled
    by_conf = store.query_examples(dataset="mnli", order_by="confidence", descending=True, limit=None)
    assert [r.confidence for r in by_conf] == sorted(
        (preds[e.id].probs and max(preds[e.id].probs) for e in exs[:30]), reverse=True
    )
    pages = [store.query_examples(order_by="id", limit=10, offset=o) for o in range(0, 60, 10)]
    in_order = [r.id for r in store.query_examples(order_by="id", limit=None)]
    assert [r.id for p in pages for r in p] == in_order and sorted(in_order) == sorted(e.id for e in exs)
    store.add_examples([NLIExample("odd", "100% sure", "a_b", "neutral", "mnli", "dev")])
    assert [r.id for r in store.query_examples(search="%")] == ["odd"]
    assert [r.id for r in store.query_examples(search="_")] == ["odd"]
    with pytest.raises(Exception, match="order_by"):
        store.query_examples(order_by="premise; DROP TABLE examples")


def test_training_set_maps_positions_to_ids(filled):
    store, exs, _, _ = filled
    ids = [e.id for e in exs[:10]][::-1]
    store.set_training_set(ids)
    assert store.train_ids() == ids
    assert [r.train_pos for r in store.get_examples(ids)] == list(range(10))
    assert store.count_examples(in_training_set=True) == 10
    store.set_training_set(ids[:3])  # replaces, no unique-position clash
    assert store.train_ids() == ids[:3] and store.get_example(ids[5]).train_pos is None
    with pytest.raises(WorkspaceError, match="not in the store"):
        store.set_training_set(["nope"])


def test_models_and_predictions_are_idempotent(filled):
    store, exs, model, preds = filled
    again = store.get_or_create_model("other name", "/x", {"epochs": 1}, MNLI)
    assert again.id == model.id and store.find_model().id == model.id
    assert store.find_model(config_hash=config_hash({"epochs": 1})).id == model.id
    new = PredictionIn(exs[0].id, [0.1, 0.1, 0.8], "contradiction", exs[0].label == "contradiction")
    store.save_predictions(model.id, [new, new])
    assert store.get_prediction(model.id, exs[0].id).probs == [0.1, 0.1, 0.8]
    assert len(store.get_predictions(model.id)) == len(preds)
    assert store.update_model(model.id, metrics={"acc": 0.5}).metrics == {"acc": 0.5}
    with pytest.raises(IntegrityError):  # foreign keys are enforced
        store.save_predictions(model.id, [PredictionIn("unknown", [1.0], "entailment", True)])


def test_neighbors_replace_per_query(filled):
    store, exs, model, _ = filled
    store.save_neighbors(model.id, {exs[0].id: [(exs[1].id, 0.5), (exs[2].id, 0.7), (exs[3].id, 0.9)]})
    store.save_neighbors(model.id, {exs[0].id: [(exs[4].id, 0.1), (exs[1].id, 0.2)]})
    got = store.get_neighbors(model.id, exs[0].id)
    assert [(n.rank, n.train_id, n.distance) for n in got] == [(0, exs[4].id, 0.1), (1, exs[1].id, 0.2)]
    assert got[0].premise == exs[4].premise and store.get_neighbors(model.id, exs[0].id, limit=1) == got[:1]


def test_neighbours_and_predictions_written_a_few_queries_at_a_time_equal_one_batch(filled):
    """Issue 29: the rows are built ``chunk`` queries at a time (not N x k dicts at once); the result is
    the same as one batch, a generator of predictions included, and a later write replaces per query."""
    from fastif_core.store import results as res

    store, exs, model, _ = filled
    lists = {
        q.id: [(exs[(i + j + 1) % len(exs)].id, 0.1 * j) for j in range(3)] for i, q in enumerate(exs[:7])
    }
    with store.transaction() as s:
        assert res.save_neighbors(s, model.id, lists, chunk=2) == 21
    for q, want in lists.items():
        assert [(n.train_id, n.distance) for n in store.get_neighbors(model.id, q)] == pytest.approx(want)
    with store.transaction() as s:
        res.save_neighbors(s, model.id, {exs[6].id: lists[exs[6].id][:1]}, chunk=2)
    assert (
        len(store.get_neighbors(model.id, exs[6].id)) == 1
        and len(store.get_neighbors(model.id, exs[5].id)) == 3
    )
    preds = (
        PredictionIn(e.id, [0.2, 0.3, 0.5], "contradiction", e.label == "contradiction") for e in exs[:5]
    )
    with store.transaction() as s:
        assert res.save_predictions(s, model.id, preds, chunk=2) == 5
    got = store.get_predictions(model.id, [e.id for e in exs[:5]])
    assert all(got[e.id].probs == [0.2, 0.3, 0.5] and got[e.id].predicted == "contradiction" for e in exs[:5])


def test_influence_run_with_job_is_atomic_and_idempotent(filled):
    store, exs, model, _ = filled
    cfg = InfluenceConfig(k=4)
    scores = {exs[1].id: 0.3, exs[2].id: -0.5, exs[3].id: 0.0, exs[4].id: -0.1}
    job = store.enqueue_job("influence", {"example_id": exs[0].id})
    assert store.claim_job("w1").id == job.id
    with pytest.raises(LeaseLostError):
        store.save_influence_run(model.id, exs[0].id, cfg, scores, job_id=job.id, owner="intruder")
    assert store.find_influence_run(model.id, exs[0].id, config_hash(cfg)) is None
    bad = {**scores, "no-such-example": 1.0}
    with pytest.raises(IntegrityError):  # one bad score: neither the run nor the job changes
        store.save_influence_run(model.id, exs[0].id, cfg, bad, job_id=job.id, owner="w1")
    assert store.find_influence_run(model.id, exs[0].id, config_hash(cfg)) is None
    assert store.get_job(job.id).status == "running"
    run_id = store.save_influence_run(
        model.id, exs[0].id, cfg, scores, timings={"total": 1.5}, job_id=job.id, owner="w1"
    )
    done = store.get_job(job.id)
    assert (done.status, done.result, done.progress) == ("done", {"influence_run_id": run_id}, 1.0)
    assert store.save_influence_run(model.id, exs[0].id, cfg, scores) == run_id
    run = store.get_influence_run(run_id)
    assert [s.value for s in run.scores] == [-0.5, -0.1, 0.0, 0.3] and [s.rank for s in run.scores] == [
        0,
        1,
        2,
        3,
    ]
    assert [s.train_id for s in run.helpful()] == [exs[2].id, exs[4].id]
    assert [s.train_id for s in run.harmful(1)] == [exs[1].id] and run.scores[0].premise == exs[2].premise
    assert (run.num_candidates, run.timings, run.config["k"], run.job_id) == (4, {"total": 1.5}, 4, job.id)
    assert store.list_influence_runs(example_id=exs[0].id)[0].id == run_id


def test_app_results_unique_per_config_and_bench_appends(filled):
    store, _, model, _ = filled
    g1 = store.save_app_result("graph", {"top": 5}, {"nodes": [1, 2]}, model_id=model.id)
    g2 = store.save_app_result("graph", {"top": 5}, {"nodes": [9]}, model_id=model.id)
    assert g1.id == g2.id and g2.result == {"nodes": [1, 2]}
    assert store.find_app_result("graph", config_hash({"top": 5}), model_id=model.id).id == g1.id
    g3 = store.save_app_result("graph", {"top": 5, "seed": 1}, {}, model_id=model.id, config_hash="k")
    assert store.find_app_result("graph", "k", model_id=model.id).id == g3.id != g1.id
    c = store.save_app_result(
        "correction", {"m": 10}, {"before": 0.5, "after": 0.6}, model_id=model.id, kind="remove"
    )
    assert store.get_app_result("correction", c.id).kind == "remove"
    b1, b2 = store.save_bench({"quick": True}, {"t": 1}), store.save_bench({"quick": True}, {"t": 2})
    assert b1.id != b2.id and store.latest_bench().result == {"t": 2}
    assert [r.id for r in store.list_app_results("bench")] == [b2.id, b1.id]
    with pytest.raises(Exception, match="allowed"):
        store.save_app_result("nonsense", {}, {})


def test_claim_statement_uses_skip_locked_on_postgresql():
    sql = str(_claimable(utcnow(), ["influence"]).compile(dialect=postgresql.dialect()))
    assert "FOR UPDATE SKIP LOCKED" in sql and "LIMIT" in sql


def test_influence_run_under_a_caller_chosen_key(filled):
    store, exs, model, _ = filled
    cfg = InfluenceConfig(k=2, top=1)
    run_id = store.save_influence_run(
        model.id, exs[0].id, cfg, [(exs[1].id, 0.2), (exs[2].id, -0.2)], config_hash="without-top"
    )
    assert store.find_influence_run(model.id, exs[0].id, "without-top").id == run_id
    assert store.find_influence_run(model.id, exs[0].id, config_hash(cfg)) is None
    assert store.get_influence_run(run_id).config == {**to_dict(cfg)}


def test_jobs_of_an_example_are_found_past_any_number_of_newer_jobs(store):
    """The Example page's job look-up filters on the JSON parameter in SQL (SQLite and PostgreSQL), so an
    example's job is found behind 300 newer ones (the page used to search only the 200 newest)."""
    target = store.enqueue_job("influence", {"example_id": "ex-old", "k": 5})
    for i in range(300):
        store.enqueue_job("influence", {"example_id": f"ex-{i}", "k": 5})
    store.enqueue_job("simulate", {"example_id": "ex-old"})  # another kind: not an influence job
    found = store.list_jobs(kind="influence", example_id="ex-old", limit=1)
    assert [j.id for j in found] == [target.id] and found[0].params["example_id"] == "ex-old"
    assert len(store.list_jobs(kind="influence", limit=1000)) == 301
    assert store.list_jobs(example_id="ex-old", limit=10)[0].kind == "simulate"  # newest first, any kind
    assert store.list_jobs(kind="influence", example_id="ex-none") == []
    assert [j.id for j in store.list_jobs(status=["queued"], kind="influence", example_id="ex-old")] == [
        target.id
    ]


def test_checkpoint_folds_the_write_ahead_log_into_the_file(tmp_path):
    from fastif_core.data import NLIExample

    store = Store.open(tmp_path / "ws")
    store.add_examples(
        [
            NLIExample(f"e{i}", "a premise " * 20, "a hypothesis", "neutral", "mnli", "train")
            for i in range(500)
        ]
    )
    wal = tmp_path / "ws" / "fastif.db-wal"
    assert wal.stat().st_size > 0
    store.checkpoint()
    assert wal.stat().st_size == 0 and store.count_examples() == 500
    store.close()


def test_publish_makes_exactly_the_given_examples_members_each_time(store):
    """Membership (what Browse shows) after publishes of overlapping example sets; counted in SQL."""
    from sqlalchemy import text

    exs = make_examples()
    model = store.get_or_create_model("tiny", "/ckpt", {"epochs": 1}, MNLI)
    datasets = {"mnli": {}, "hans": {}}

    def publish(members):
        store.publish(
            datasets=datasets,
            examples=members,
            model_id=model.id,
            train_ids=[e.id for e in members if e.split == "train"],
            predictions=[],
            neighbors={},
        )
        with store.engine.connect() as conn:
            return {r[0] for r in conn.execute(text("SELECT id FROM examples WHERE in_workspace"))}

    assert publish(exs) == {e.id for e in exs}
    half = exs[: len(exs) // 2]
    assert publish(half) == {e.id for e in half}  # the others leave
    assert store.count_examples(in_workspace=None) == len(exs)  # ... but stay stored
    assert publish(exs[5:]) == {e.id for e in exs[5:]}  # some come back, the first five leave


def test_predicted_labels_are_the_models_own(filled):
    store, _, model, preds = filled
    assert store.predicted_labels(model.id) == sorted({p.predicted for p in preds.values()})
    assert store.predicted_labels() == store.predicted_labels(model.id)  # the active (newest) model
    assert store.predicted_labels(model.id + 99) == []


def test_analyze_gives_the_planner_statistics_of_the_examples(store):
    """After ANALYZE the planner knows the examples' row counts (SQLite's sqlite_stat1, PostgreSQL's
    pg_class.reltuples), which is what keeps it from the (in_workspace, id) index for broad filters."""
    from sqlalchemy import text

    store.add_examples(make_examples())
    store.analyze()
    with store.engine.connect() as conn:
        if store.engine.dialect.name == "sqlite":
            rows = conn.execute(text("SELECT stat FROM sqlite_stat1 WHERE tbl = 'examples'")).scalars().all()
            assert rows and all(int(r.split()[0]) == len(make_examples()) for r in rows)
        else:
            n = conn.execute(text("SELECT reltuples FROM pg_class WHERE relname = 'examples'")).scalar()
            assert int(n) == len(make_examples())


def test_pages_under_prediction_filters_follow_the_order_asked(filled):
    """Pages filtered on predictions (SQLite orders them by ``+col`` so no index supplies the order) equal
    the same filter and order computed in Python, page by page, on both backends."""
    store, exs, model, preds = filled
    wrong = sorted(i for i, p in preds.items() if not p.correct)
    got = [
        r.id
        for off in range(0, len(wrong), 3)
        for r in store.query_examples(correct=False, limit=3, offset=off)
    ]
    assert got == wrong and len(wrong) >= 4
    label = next(iter(preds.values())).predicted
    mine = [i for i, p in preds.items() if p.predicted == label]
    want = sorted(mine, key=lambda i: (-max(preds[i].probs), i))
    got = store.query_examples(predicted=label, order_by="confidence", descending=True, limit=None, offset=1)
    assert [r.id for r in got] == want[1:]
