"""The correction loop's pieces against ground truth on tiny float64 models (fastif_core.apps.correct.loop):
the step, the anchors' mean-loss gradient, the helpful / harmful choice, pool scoring, the slices."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from factories import make_tiny_bert, make_tiny_examples

from fastif_core.apps.correct.config import CorrectConfig, parse_slice
from fastif_core.apps.correct.data import check_disjoint, select, split_target
from fastif_core.apps.correct.loop import (
    anchor_influence,
    anchor_schedule,
    evaluate,
    pick,
    sgd_step,
)
from fastif_core.apps.correct.summary import markdown_table, merge_runs, summarize
from fastif_core.config import STestConfig
from fastif_core.engine.influence import test_gradient
from fastif_core.engine.objective import classifier_objective
from fastif_core.engine.scoring import score_candidates_reference
from fastif_core.engine.solvers import solve
from fastif_core.errors import ConfigError
from fastif_core.store import Store

TINY_S_TEST = STestConfig.default(depth=4, batch_size=8)


@pytest.fixture
def tiny():
    model = make_tiny_bert(seed=1, dtype=torch.float64)
    return model, classifier_objective(model, weight_decay=0.01), make_tiny_examples(n=12, seed=2)


def test_one_step_equals_a_manual_sgd_step_on_the_chosen_examples(tiny):
    model, objective, data = tiny
    manual = copy.deepcopy(model)
    rows, lr = [3, 0, 7], 0.05
    sgd_step(objective, data.collate(rows), lr)
    batch = data.collate(rows)
    loss = F.cross_entropy(
        manual(**{k: v for k, v in batch.items() if k != "labels"}).logits, batch["labels"]
    )
    loss.backward()
    with torch.no_grad():
        for p in manual.parameters():
            if p.requires_grad:
                p -= lr * p.grad
    changed = 0
    for (name, got), want in zip(model.named_parameters(), manual.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=name)
        changed += int(not torch.equal(got, make_tiny_bert(seed=1, dtype=torch.float64).state_dict()[name]))
    assert changed > 0


def test_a_batch_of_anchors_gives_the_gradient_of_their_mean_loss(tiny):
    _, objective, data = tiny
    anchors = [1, 4, 5, 9]
    batched = test_gradient(objective, data.collate(anchors))
    single = torch.stack([test_gradient(objective, data.collate([a])) for a in anchors]).mean(0)
    torch.testing.assert_close(batched, single, rtol=1e-8, atol=1e-10)


def test_helpful_and_harmful_take_the_most_negative_and_most_positive_influence(tiny):
    _, objective, data = tiny
    cfg = CorrectConfig(s_test=TINY_S_TEST, top=3)
    anchors, cands = data.collate([0, 1]), [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    values, stats = anchor_influence(objective, anchors, data, data, cands, cfg)
    s_test = solve(objective, test_gradient(objective, anchors), data, TINY_S_TEST).s_test
    reference = score_candidates_reference(objective, s_test, data, cands)  # one backward per candidate
    torch.testing.assert_close(values, reference, rtol=1e-7, atol=1e-12)
    value_of = dict(
        zip(cands, reference.tolist(), strict=True)
    )  # the tiny data repeats pairs: compare values
    ranked = sorted(value_of.values())
    helpful, harmful = pick("helpful", values, cands, 3), pick("harmful", values, cands, 3)
    assert [value_of[c] for c in helpful] == pytest.approx(ranked[:3], rel=1e-9, abs=1e-15)
    assert [value_of[c] for c in harmful] == pytest.approx(ranked[::-1][:3], rel=1e-9, abs=1e-15)
    assert ranked[0] < 0 < ranked[-1] and len(set(helpful)) == len(set(harmful)) == 3
    assert stats["solver"] == "cg"


def test_a_pool_example_scores_as_the_same_example_in_the_training_set(tiny):
    _, objective, data = tiny
    cfg = CorrectConfig(s_test=TINY_S_TEST)
    rows = [11, 2, 6, 9]
    pool = data.subset(rows)  # a separate dataset holding copies of four training examples
    anchors = data.collate([0, 1, 3])
    as_train, _ = anchor_influence(objective, anchors, data, data, rows, cfg)
    as_pool, _ = anchor_influence(objective, anchors, data, pool, list(range(len(rows))), cfg)
    torch.testing.assert_close(as_pool, as_train, rtol=1e-10, atol=1e-14)


def test_evaluate_counts_two_way_non_entailment_as_any_class_but_entailment(tiny):
    model, _, data = tiny
    enc = data.subset(range(6))
    enc.labels[:] = torch.tensor([0, 1, 2, 3, 3, 0])  # 3 = merged non-entailment on the 3-way model
    with torch.no_grad():
        probs = torch.softmax(
            model(**{k: v for k, v in enc.collate(range(6)).items() if k != "labels"}).logits, -1
        )
    p_gold = torch.stack(
        [probs[0, 0], probs[1, 1], probs[2, 2], 1 - probs[3, 0], 1 - probs[4, 0], probs[5, 0]]
    )
    pred = probs.argmax(1)
    hits = [pred[0] == 0, pred[1] == 1, pred[2] == 2, pred[3] != 0, pred[4] != 0, pred[5] == 0]
    got = evaluate(model, {"part": enc})["part"]
    assert got["n"] == 6
    assert got["loss"] == pytest.approx(float(-p_gold.log().mean()), rel=1e-5)
    assert got["accuracy"] == pytest.approx(sum(map(bool, hits)) / 6)


def test_summary_is_mean_min_max_over_seeds_with_before_first():
    before = {"a": {"accuracy": 0.5, "loss": 1.0}}
    runs = [
        {"curve": [{"a": {"accuracy": 0.6, "loss": 0.9}}]},
        {"curve": [{"a": {"accuracy": 0.8, "loss": 0.7}}]},
    ]
    acc = summarize(before, runs)["a"]["accuracy"]
    assert acc["mean"] == pytest.approx([0.5, 0.7]) and acc["min"] == [0.5, 0.6] and acc["max"] == [0.5, 0.8]


def _run(seed, seeds, split_seed=None, accuracy=0.5, model_id=1):
    """A stored result's shape: every seed's one-iteration curve has accuracy 0.1 * (seed + 1)."""
    runs = [
        {"seed": s, "curve": [{"a": {"n": 4, "accuracy": 0.1 * (s + 1), "loss": 1.0}}]}
        for s in range(seed, seed + seeds)
    ]
    return {
        "settings": {
            "slice": "heuristic=x",
            "seed": seed,
            "seeds": seeds,
            "split_seed": split_seed,
            "save": None,
            "model_id": None,
            "lr": 1e-4,
        },
        "model_id": model_id,
        "kind": "correct",
        "before": {"a": {"n": 4, "accuracy": accuracy, "loss": 1.0}},
        "seconds": {"total": 10.0},
        "device": "cpu",
        "methods": {"helpful": {"seeds": runs}},
    }


def test_runs_merge_only_within_one_split_model_and_before():
    (one,) = merge_runs([(2, _run(1, 1, split_seed=0)), (1, _run(0, 2))])  # split None = seed 0
    assert one["run_ids"] == [1, 2] and one["seed_list"] == [0, 1] and one["settings"]["seeds"] == 2
    assert one["settings"]["split_seed"] == 0 and one["seconds"]["total"] == 20.0
    acc = one["methods"]["helpful"]["summary"]["a"]["accuracy"]  # seed 1 (held twice) counted once
    assert acc["mean"] == pytest.approx([0.5, 0.15]) and acc["min"] == [0.5, 0.1] and acc["max"] == [0.5, 0.2]
    apart = [
        _run(0, 1),
        _run(1, 1, split_seed=1),
        _run(1, 1, split_seed=0, model_id=2),
        _run(1, 1, split_seed=0, accuracy=0.25),
    ]
    assert [m["seed_list"] for m in merge_runs(list(enumerate(apart)))] == [[0], [1], [1], [1]]


def test_a_run_stored_before_pool_size_existed_merges_with_one_that_has_it_unset():
    new = _run(1, 1, split_seed=0)
    new["settings"]["pool_size"] = None
    sampled = _run(2, 1, split_seed=0)
    sampled["settings"]["pool_size"] = 300
    merged = merge_runs([(1, _run(0, 1)), (2, new), (3, sampled)])
    assert [m["seed_list"] for m in merged] == [[0, 1], [2]]


def test_markdown_table_has_the_final_mean_min_max_per_method_and_part():
    (one,) = merge_runs([(1, _run(0, 2)), (2, _run(2, 1, split_seed=0))])  # seeds 0, 1, 2: 0.1, 0.2, 0.3
    lines = markdown_table(one).splitlines()
    assert lines[0] == "| method | a (n=4) |" and lines[2] == "| before | 0.500 |"
    assert lines[3] == "| helpful | 0.200 [0.100, 0.300] |" and len(lines) == 4
    (single,) = merge_runs([(3, _run(1, 1))])  # a stored run's shape, with its summary
    assert markdown_table(single).splitlines()[3] == "| helpful | 0.200 |"  # one seed: the value
    assert markdown_table(one, "loss").splitlines()[3] == "| helpful | 1.000 [1.000, 1.000] |"


def test_anchor_schedule_is_seeded_and_every_draw_has_distinct_anchors():
    a, b = anchor_schedule(20, 5, 4, seed=3), anchor_schedule(20, 5, 4, seed=3)
    assert a == b and a != anchor_schedule(20, 5, 4, seed=4)
    assert all(len(set(draw)) == 5 and max(draw) < 20 for draw in a)


def test_slice_text_is_parsed_with_a_clear_error():
    assert parse_slice("heuristic=lexical_overlap,label=non-entailment") == {
        "heuristic": "lexical_overlap",
        "label": "non-entailment",
    }
    for bad in ("", "heuristic", "colour=red", "heuristic=a,heuristic=b", "label="):
        with pytest.raises(ConfigError, match="slice=.*allowed key=value"):
            parse_slice(bad)


def test_split_is_seeded_disjoint_and_covers_the_slice(tiny_workspace_template):
    with Store.open(tiny_workspace_template) as store:
        cfg = CorrectConfig(anchors=2, seed=5)
        data = select(store, cfg, 1)
        again = select(store, cfg, 1)
        other = select(store, CorrectConfig(anchors=2, seed=6), 1)
        target = store.query_examples(heuristic="lexical_overlap", label="non-entailment", limit=None)
    check_disjoint(data)
    pool, own = {e.id for e in data.anchor_pool}, {e.id for e in data.evals[data.target]}
    assert pool and own and not pool & own and pool | own == {r.id for r in target}
    assert [e.id for e in again.anchor_pool] == [e.id for e in data.anchor_pool]
    assert {e.id for e in other.anchor_pool} != pool
    assert set(data.evals) == {
        f"heuristic={h},label=non-entailment" for h in ("constituent", "lexical_overlap", "subsequence")
    }
    assert data.heldout and all(e.split == "dev" for e in data.heldout)
    assert not {e.id for e in data.heldout} & pool


def test_split_target_keeps_both_parts_non_empty():
    rows = [type("R", (), {"id": f"x{i}"})() for i in range(3)]
    for fraction in (0.01, 0.5, 0.99):
        pool, rest = split_target(rows, fraction, 0)
        assert pool and rest and len(pool) + len(rest) == 3
