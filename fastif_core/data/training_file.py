"""A training file of any size from the built-in generator (``fastif corpus --train-size N``).

It stands in for the *size* of MNLI's 392,702-row training file, not for its language. Each row is a pair
of the built-in mixture (:mod:`fastif_core.data.demo`: HANS entailment constructions and scenes, hypotheses
entailed, neutral or contradicting, a ``counter_fraction`` of counter-heuristic pairs) set in one of five
genres: an opener and a number of further context sentences, drawn per genre, that lengthen the premise
(4 to about 90 words); a quarter of the hypotheses also restate one of those sentences. Context sentences
never name a person of the hypothesis, so they do not change the label.

Rows are streamed: labels come in shuffled blocks of three (so they are balanced to within one row), every
pair is distinct (checked by an 8-byte hash per pair, the only memory that grows with N) and disjoint from
the built-in corpus's dev, challenge and augment splits (the same split bins), and a larger N extends the
same rows. The file is MNLI-style TSV (``index genre sentence1 sentence2 gold_label``), which
``fastif prepare --train`` reads as the ``glue_tsv`` format.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fastif_core.data import vocab as v
from fastif_core.data.demo import (
    SPLIT_BINS,
    counter_contradiction,
    counter_neutral,
    mixture_hypothesis,
    mixture_premise,
    pair_bin,
)
from fastif_core.data.records import MNLI_LABELS
from fastif_core.errors import ConfigError

COLUMNS = ("index", "genre", "sentence1", "sentence2", "gold_label")
_MAX_MISSES = 20_000  # consecutive draws without a new pair before the stream counts as exhausted


@dataclass(frozen=True)
class Genre:
    """How one genre frames a pair: premise openers, context connectives, how many context sentences."""

    name: str
    openers: tuple[str, ...]  # "" = none
    connectives: tuple[str, ...]  # the start of each context sentence ("" = none)
    mean_context: float  # mean number of context sentences (geometric, at most MAX_CONTEXT)


GENRES: tuple[Genre, ...] = (
    Genre("fiction", ("", "That evening,", "In the end,"), ("Later,", "Then", "Meanwhile,", ""), 2.0),
    Genre(
        "telephone", ("Well,", "You know,", "I mean,", "Uh,", "Yeah,"), ("And", "So", "But", "And uh,"), 0.6
    ),
    Genre(
        "travel",
        ("", "In Paris,", "In Rome,", "In Lisbon,", "In Tokyo,"),
        ("Nearby,", "That afternoon,", ""),
        1.2,
    ),
    Genre(
        "news", ("On Monday,", "On Friday,", "Last week,", "Yesterday,"), ("Separately,", "Earlier,", ""), 1.5
    ),
    Genre("letters", ("", "Dear friend,", "As you know,"), ("Also,", "Besides,", "As always,", ""), 3.0),
)
MAX_CONTEXT = 12
HYPOTHESIS_CONTEXT = 0.25  # share of hypotheses (with a context sentence to use) that restate one
Row = tuple[str, str, str, str]  # premise, hypothesis, label, genre


@dataclass
class Summary:
    """What :func:`write_training_file` wrote: rows per label and per genre."""

    rows: int = 0
    labels: Counter = field(default_factory=Counter)
    genres: Counter = field(default_factory=Counter)


def _words(text: str) -> set[str]:
    return set(text.lower().replace(",", " ").replace(".", " ").split())


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _context_clause(rng: random.Random, avoid: set[str]) -> str:
    """A clause about one or two people not named in ``avoid`` (rendered, no final period)."""
    pool = [n for n in v.NOUNS if n[0] not in avoid and n[1] not in avoid]
    (a, a_pl), (b, b_pl) = rng.sample(pool, 2)
    subject = ["the", a_pl if rng.random() < 0.3 else a]
    obj = ["the", b_pl if rng.random() < 0.3 else b] if rng.random() < 0.5 else None
    tokens = v.clause(rng, subject, obj)
    if rng.random() < 0.3:
        tokens = [*tokens, "in", "the", rng.choice(v.LOCATIONS)]
    return " ".join(tokens)


def _core(rng: random.Random, label: str, counter_fraction: float) -> tuple[str, str]:
    """A premise and a hypothesis of the built-in mixture with gold label ``label``."""
    if label != "entailment" and rng.random() < counter_fraction:
        premise, hypothesis, _, _ = (counter_neutral if label == "neutral" else counter_contradiction)(rng)
        return premise, hypothesis
    premise, entailed, loc, _ = mixture_premise(rng)
    hypothesis, _ = mixture_hypothesis(rng, label, premise, entailed, loc)
    return v.sentence(premise), v.sentence(hypothesis)


def _framed(rng: random.Random, genre: Genre, premise: str, hypothesis: str) -> tuple[str, str]:
    """The pair set in ``genre``: opener, context sentences; sometimes one restated in the hypothesis."""
    opener = rng.choice(genre.openers)
    if opener:
        premise = f"{opener} {_lower_first(premise)}"
    n = 0
    while n < MAX_CONTEXT and rng.random() < genre.mean_context / (1.0 + genre.mean_context):
        n += 1  # geometric with mean genre.mean_context
    avoid = _words(hypothesis)
    clauses = [_context_clause(rng, avoid) for _ in range(n)]
    for clause in clauses:
        connective = rng.choice(genre.connectives)
        premise += " " + (f"{connective} {clause}." if connective else v.sentence(clause.split()))
    if clauses and rng.random() < HYPOTHESIS_CONTEXT:
        hypothesis = f"{hypothesis[:-1]}, and {rng.choice(clauses)}."
    return premise, hypothesis


def _pair_hash(premise: str, hypothesis: str) -> int:
    digest = hashlib.blake2b(f"{premise}\t{hypothesis}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def training_rows(n: int, seed: int = 0, counter_fraction: float = 0.01) -> Iterator[Row]:
    """The first ``n`` rows ``(premise, hypothesis, label, genre)`` of the seeded stream, one at a time."""
    if n < 0:
        raise ConfigError(f"train_size={n} is invalid: allowed an integer >= 1")
    if not 0.0 <= counter_fraction <= 1.0:
        raise ConfigError(f"counter_fraction={counter_fraction!r} is invalid: allowed 0.0 to 1.0")
    rng = random.Random(f"fastif-training-file:{seed}")
    seen: set[int] = set()
    labels: list[str] = []
    for made in range(n):
        if not labels:
            labels = rng.sample(MNLI_LABELS, len(MNLI_LABELS))  # the next block of three
        label, misses = labels.pop(), 0
        while True:
            genre = rng.choice(GENRES)
            premise, hypothesis = _framed(rng, genre, *_core(rng, label, counter_fraction))
            key = _pair_hash(premise, hypothesis)
            if key not in seen and pair_bin(premise, hypothesis) in SPLIT_BINS["train"]:
                break
            misses += 1
            if misses > _MAX_MISSES:
                raise ConfigError(f"training file: ran out of distinct pairs after {made}; asked for {n}")
        seen.add(key)
        yield premise, hypothesis, label, genre.name


def write_training_file(path: str | Path, n: int, seed: int = 0, counter_fraction: float = 0.01) -> Summary:
    """Write :func:`training_rows` as MNLI-style TSV (header :data:`COLUMNS`); the file appears whole or
    not at all (written next to it, then renamed)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    summary = Summary()
    try:
        with tmp.open("w", encoding="utf-8", newline="\n") as out:
            out.write("\t".join(COLUMNS) + "\n")
            for i, (premise, hypothesis, label, genre) in enumerate(training_rows(n, seed, counter_fraction)):
                out.write(f"{i}\t{genre}\t{premise}\t{hypothesis}\t{label}\n")
                summary.labels[label] += 1
                summary.genres[genre] += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    summary.rows = sum(summary.labels.values())
    return summary
