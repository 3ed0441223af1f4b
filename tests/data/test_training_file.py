"""The training file of any size (``fastif corpus --train-size N``): distinct pairs, balanced labels, five
genres, a spread of lengths, deterministic by seed, streamed, and read back by the loaders as it was written."""

from __future__ import annotations

import statistics
from collections import Counter
from itertools import islice
from pathlib import Path

import pytest

from fastif_core.cli import main
from fastif_core.data import MNLI_LABELS, demo_corpus, load_source
from fastif_core.data.demo import SPLIT_BINS, pair_bin
from fastif_core.data.training_file import COLUMNS, GENRES, training_rows, write_training_file

N = 3000


@pytest.fixture(scope="module")
def rows() -> list[tuple[str, str, str, str]]:
    return list(training_rows(N, seed=0))


def test_every_pair_is_distinct_and_none_is_in_the_demo_evaluation_splits(rows):
    pairs = [(p, h) for p, h, _, _ in rows]
    assert len(rows) == N and len(set(pairs)) == N
    assert all(pair_bin(p, h) in SPLIT_BINS["train"] for p, h in pairs)
    demo = demo_corpus(seed=0, train_size=0, dev_size=400, per_subcase=20, augment_size=100)
    held = {(e.premise, e.hypothesis) for split in ("dev", "challenge", "augment") for e in demo[split]}
    assert not held & set(pairs)


def test_labels_are_balanced_to_one_row_and_genres_share_the_rows(rows):
    labels = Counter(y for _, _, y, _ in rows)
    assert set(labels) == set(MNLI_LABELS) and max(labels.values()) - min(labels.values()) <= 1
    first = Counter(y for _, _, y, _ in rows[:100])  # blocks of three: balanced at every prefix too
    assert max(first.values()) - min(first.values()) <= 1
    genres = Counter(g for _, _, _, g in rows)
    assert set(genres) == {g.name for g in GENRES} and len(genres) == 5
    assert all(abs(count / N - 1 / 5) < 0.03 for count in genres.values())
    for genre in genres:  # no genre is tied to one label
        in_genre = Counter(y for _, _, y, g in rows if g == genre)
        assert all(abs(c / genres[genre] - 1 / 3) < 0.06 for c in in_genre.values())


def test_lengths_spread_like_a_real_corpus(rows):
    premise = [len(p.split()) for p, _, _, _ in rows]
    hypothesis = [len(h.split()) for _, h, _, _ in rows]
    deciles = statistics.quantiles(premise, n=10)
    assert min(premise) <= 6 and max(premise) >= 50 and deciles[-1] - deciles[0] >= 15
    assert 12 <= statistics.mean(premise) <= 30  # MNLI's training premises: about 22 words on average
    assert (
        min(hypothesis) <= 3
        and max(hypothesis) >= 12
        and statistics.mean(hypothesis) < statistics.mean(premise)
    )
    by_genre = {
        g: statistics.mean(len(p.split()) for p, _, _, gg in rows if gg == g) for g in {r[3] for r in rows}
    }
    assert by_genre["letters"] > by_genre["telephone"] + 5  # genres differ in length, not only in name


def test_deterministic_by_seed_and_a_larger_size_extends_the_same_rows(rows):
    assert list(training_rows(N, seed=0)) == rows
    assert list(training_rows(500, seed=0)) == rows[:500]
    other = list(training_rows(500, seed=1))
    assert len({(p, h) for p, h, _, _ in other} & {(p, h) for p, h, _, _ in rows[:500]}) < 10


def test_rows_are_streamed_not_built_first():
    """The first rows of a billion-row stream come at once: nothing of size N is built up front."""
    assert len(list(islice(training_rows(10**9, seed=0), 5))) == 5


def test_the_file_loads_as_written(tmp_path: Path, rows):
    path = tmp_path / "train.tsv"
    summary = write_training_file(path, 600, seed=0)
    assert summary.rows == 600 and sum(summary.genres.values()) == 600
    assert path.read_text().splitlines()[0].split("\t") == list(COLUMNS)
    assert [p.name for p in tmp_path.iterdir()] == ["train.tsv"]  # no temporary file left behind
    loaded = load_source(str(path))
    assert loaded.format == "glue_tsv" and loaded.skipped_no_consensus == 0
    got = [(e.premise, e.hypothesis, e.label, e.slices["genre"]) for e in loaded.examples]
    assert got == rows[:600]
    assert len({e.id for e in loaded.examples}) == 600 and loaded.examples[0].id == "mnli:train:0"


def test_cli_writes_a_training_file_and_keeps_the_hans_file(tmp_path: Path, capsys):
    out = tmp_path / "train.tsv"
    assert main(["corpus", "--train-size", "90", "--seed", "2", "--out", str(out)]) == 0
    assert "wrote 90 training pairs (3 labels, 5 genres" in capsys.readouterr().out
    assert out.read_text().splitlines()[1:] == [
        f"{i}\t{g}\t{p}\t{h}\t{y}" for i, (p, h, y, g) in enumerate(training_rows(90, seed=2))
    ]
    hans = tmp_path / "heuristics_evaluation_set.txt"
    assert main(["corpus", "--out", str(hans)]) == 0
    assert "heuristic" in hans.read_text().splitlines()[0].split("\t")
