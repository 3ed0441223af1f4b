"""The built-in corpus: deterministic, HANS-complete, heuristics mostly hold in training, HANS round trip."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from fastif_core.data import HANS_LABELS, MNLI_LABELS, demo_corpus, demo_split, load_source, write_hans_format
from fastif_core.data.hans import HANS_COLUMNS, binary_parse, parse, tokenize
from fastif_core.data.templates import HEURISTICS, SUBCASES
from fastif_core.data.vocab import content_overlap
from fastif_core.errors import ConfigError


@pytest.fixture(scope="module")
def corpus():
    return demo_corpus(seed=0, train_size=2000, dev_size=400, per_subcase=20, augment_size=100)


def words(text: str) -> list[str]:
    return [w.lower() for w in tokenize(text) if w not in {".", ","}]


def is_contiguous(sub: list[str], seq: list[str]) -> bool:
    return any(seq[i : i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def test_same_seed_same_corpus_other_seed_differs(corpus):
    again = demo_corpus(seed=0, train_size=2000, dev_size=400, per_subcase=20, augment_size=100)
    assert again == corpus
    other = demo_corpus(seed=1, train_size=2000, dev_size=400, per_subcase=20, augment_size=100)
    for split in corpus:
        assert [(e.premise, e.hypothesis) for e in other[split]] != [
            (e.premise, e.hypothesis) for e in corpus[split]
        ]


def test_bigger_train_extends_the_same_list(corpus):
    assert demo_split("train", seed=0, size=300) == corpus["train"][:300]


def test_sizes_labels_and_datasets(corpus):
    sizes = {split: len(exs) for split, exs in corpus.items()}
    assert sizes == {"train": 2000, "dev": 400, "challenge": 30 * 20, "augment": 100}
    for split in ("train", "dev"):
        counts = Counter(e.label for e in corpus[split])
        assert set(counts) == set(MNLI_LABELS) and min(counts.values()) > 0.28 * sizes[split]
    assert Counter(e.label for e in corpus["challenge"]) == {"entailment": 300, "non-entailment": 300}
    assert {e.label for e in corpus["augment"]} <= {"neutral", "contradiction"}
    assert {(e.dataset, e.split) for exs in corpus.values() for e in exs} == {
        ("demo", "train"),
        ("demo", "dev"),
        ("demo-hans", "challenge"),
        ("demo", "augment"),
    }


def test_ids_unique_and_splits_disjoint(corpus):
    ids = [e.id for exs in corpus.values() for e in exs]
    assert len(ids) == len(set(ids))
    pairs = {split: {(e.premise, e.hypothesis) for e in exs} for split, exs in corpus.items()}
    assert all(len(pairs[s]) == len(corpus[s]) for s in corpus)  # no duplicates inside a split
    splits = list(pairs)
    for i, a in enumerate(splits):
        for b in splits[i + 1 :]:
            assert not pairs[a] & pairs[b], (a, b)


def test_challenge_covers_all_heuristics_and_subcases(corpus):
    challenge = corpus["challenge"]
    by_subcase = Counter(e.slices["subcase"] for e in challenge)
    assert len(by_subcase) == 30 >= 10 and set(by_subcase.values()) == {20}
    assert {(e.slices["heuristic"], e.label) for e in challenge} == {
        (h, y) for h in HEURISTICS for y in HANS_LABELS
    }
    assert all(e.slices["template"].startswith("temp") for e in challenge)
    assert len({(e.slices["subcase"], e.slices["template"]) for e in challenge}) >= 36
    for ex in challenge:
        assert re.fullmatch(r"[A-Z][a-z ,]+\.", ex.premise) and re.fullmatch(
            r"[A-Z][a-z ,]+\.", ex.hypothesis
        )


def test_challenge_pairs_follow_the_heuristics():
    """Every hypothesis uses the premise's words; subsequence and constituent ones are contiguous in it."""
    rng = random.Random(7)
    for sub in SUBCASES:
        for _ in range(50):
            p, h, _ = sub.make(rng)
            premise, hyp = [w for w in p if w != ","], h
            if sub.heuristic == "lexical_overlap":
                assert content_overlap(" ".join(p), " ".join(h)) >= 0.75, (sub.name, p, h)
                assert not is_contiguous(hyp, premise), (sub.name, p, h)
            else:
                assert is_contiguous(hyp, premise), (sub.name, p, h)


def test_examples_from_fixed_templates():
    by_name = {s.name: s for s in SUBCASES}
    rng = random.Random(3)
    p, h, _ = by_name["ln_subject/object_swap"].make(rng)
    assert p[:2] == h[-2:] and p[-2:] == h[:2] and p[2] == h[2]  # "The A V the B." / "The B V the A."
    p, h, _ = by_name["ln_passive"].make(rng)
    assert p[2] in ("was", "were") and p[4] == "by" and h[:2] == p[:2] and h[-2:] == p[-2:]
    p, h, _ = by_name["cn_adverb"].make(rng)
    assert p[0] in ("probably", "maybe", "hopefully", "supposedly", "perhaps", "possibly") and h == p[1:]
    p, h, _ = by_name["ce_after_since_clause"].make(rng)
    assert p[0] in ("since", "because", "although", "after", "while") and h == p[p.index(",") + 1 :]


def test_training_mixture_mostly_follows_the_heuristics(corpus):
    train = corpus["train"]
    full_overlap = [e for e in train if content_overlap(e.premise, e.hypothesis) == 1.0]
    assert sum(e.label == "entailment" for e in full_overlap) >= 0.9 * len(full_overlap)
    not_entailed = [e for e in train if e.label != "entailment"]
    share = sum(content_overlap(e.premise, e.hypothesis) == 1.0 for e in not_entailed) / len(not_entailed)
    assert 0.0 < share < 0.05
    counter = [e for e in train if e.slices["genre"] == "counter_heuristic"]
    assert 0 < len(counter) < 0.03 * len(train) and all(e.label != "entailment" for e in counter)
    assert all(e.slices.get("genre") and e.slices.get("template") for e in train)
    entailed_hans = [e for e in train if e.slices["genre"] == "entailed" and "subcase" in e.slices]
    assert {e.slices["heuristic"] for e in entailed_hans} == set(HEURISTICS)
    assert {e.slices["genre"] for e in train if e.label == "contradiction"} >= {
        "negation",
        "nobody",
        "incompatible",
    }
    no_counter = demo_split("train", seed=0, size=500, counter_fraction=0.0)
    assert not [e for e in no_counter if e.slices["genre"] == "counter_heuristic"]


def test_augment_pool_is_counter_heuristic(corpus):
    augment = corpus["augment"]
    assert all(e.slices["genre"] == "counter_heuristic" and "subcase" in e.slices for e in augment)
    assert all(content_overlap(e.premise, e.hypothesis) >= 0.75 for e in augment)
    assert Counter(e.slices["heuristic"] for e in augment).keys() == set(HEURISTICS)


def test_hans_format_round_trip(corpus, tmp_path):
    path = write_hans_format(corpus["challenge"], tmp_path / "heuristics_evaluation_set.txt")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t") == list(HANS_COLUMNS) and len(lines) == 601
    res = load_source(str(path), dataset="demo-hans", split="challenge")
    assert res.format == "hans" and res.examples == corpus["challenge"]
    default = load_source(str(path)).examples
    assert default[0].id == "hans:evaluation:" + corpus["challenge"][0].key


def test_parses_are_balanced_bracketings_over_the_tokens(corpus):
    for ex in corpus["challenge"][:100] + corpus["train"][:100]:
        for text in (ex.premise, ex.hypothesis):
            bp, full = binary_parse(text), parse(text)
            for tree in (bp, full):
                depth = 0
                for ch in tree:
                    depth += {"(": 1, ")": -1}.get(ch, 0)
                    assert depth >= 0
                assert depth == 0
            assert bp.replace("(", " ").replace(")", " ").split() == tokenize(text)
            assert re.findall(r"\((?:[A-Z.,]+) ([^()\s]+)\)", full) == tokenize(text)
    assert binary_parse("The doctor saw the lawyer.") == "( ( The doctor ) ( ( saw ( the lawyer ) ) . ) )"
    assert parse("The doctor saw the lawyer.") == (
        "(ROOT (S (NP (DT The) (NN doctor)) (VP (VBD saw) (NP (DT the) (NN lawyer))) (. .)))"
    )


def test_three_way_examples_are_written_two_way(corpus, tmp_path):
    path = write_hans_format(corpus["augment"][:5], tmp_path / "aug.txt")
    assert {line.split("\t")[0] for line in path.read_text().splitlines()[1:]} == {"non-entailment"}


def test_bad_settings():
    with pytest.raises(ConfigError, match="counter_fraction=1.5"):
        demo_split("train", size=5, counter_fraction=1.5)
    with pytest.raises(ConfigError, match="size=-1"):
        demo_split("dev", size=-1)
    with pytest.raises(ConfigError, match="'challenge:se_understood_object' ran out of distinct pairs after"):
        demo_split("challenge", size=200)
