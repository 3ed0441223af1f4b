"""The 30 HANS subcases (McCoy et al. 2019) as small generators over the built-in vocabulary.

Each generator returns ``(premise_tokens, hypothesis_tokens, template)``. Every hypothesis is built
from the premise's words (the lexical-overlap heuristic holds for all of them); the subsequence and
constituent subcases further make it a subsequence / constituent of the premise. Half of the
subcases are entailed, half are not: a model that relies on the heuristics gets the latter wrong.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from fastif_core.data import vocab as v
from fastif_core.data.vocab import Tokens

Generated = tuple[Tokens, Tokens, str]


@dataclass(frozen=True)
class Subcase:
    """One HANS subcase: its heuristic, its 2-way gold label and its generator."""

    name: str
    heuristic: str
    label: str  # "entailment" or "non-entailment"
    make: Callable[[random.Random], Generated]


def _svo(rng: random.Random) -> tuple[Tokens, Tokens, Tokens, str]:
    (n1, _), (n2, _), (n3, _) = v.nouns(rng, 3)
    return n1, n2, n3, v.transitive(rng)[0]


# ---- lexical overlap -------------------------------------------------------------------------------
def ln_swap(rng):
    n1, n2, _, verb = _svo(rng)
    return [*n1, verb, *n2], [*n2, verb, *n1], "temp1"


def ln_preposition(rng):
    n1, n2, n3, verb = _svo(rng)
    p = [*n1, rng.choice(v.PREPOSITIONS), *n2, verb, *n3]
    return (p, [*n3, verb, *n2], "temp1") if rng.random() < 0.5 else (p, [*n3, verb, *n1], "temp2")


def ln_relative_clause(rng):
    n1, n2, n3, v1 = _svo(rng)
    v2 = v.transitive(rng)[0]
    if rng.random() < 0.5:
        return [*n1, "who", v1, *n2, v2, *n3], [*n2, v1, *n1], "temp1"
    return [*n1, "who", *n2, v1, v2, *n3], [*n1, v1, *n2], "temp2"


def ln_passive(rng):
    (n1, pl), (n2, _) = v.nouns(rng, 2)
    past, part, _ = v.transitive(rng)
    return [*n1, v.be(pl), part, "by", *n2], [*n1, past, *n2], "temp1"


def ln_conjunction(rng):
    n1, n2, n3, verb = _svo(rng)
    if rng.random() < 0.5:
        return [*n1, verb, *n2, "and", *n3], [*n2, verb, *n3], "temp1"
    return [*n1, "and", *n2, verb, *n3], [*n1, verb, *n2], "temp2"


def le_relative_clause(rng):
    n1, n2, n3, v1 = _svo(rng)
    v2 = v.transitive(rng)[0]
    if rng.random() < 0.5:
        return [*n1, "who", v1, *n2, v2, *n3], [*n1, v1, *n2], "temp1"
    return [*n1, "who", *n2, v1, v2, *n3], [*n2, v1, *n1], "temp2"


def le_around_pp(rng):
    n1, n2, n3, verb = _svo(rng)
    return [*n1, rng.choice(v.PREPOSITIONS), *n2, verb, *n3], [*n1, verb, *n3], "temp1"


def le_around_relative_clause(rng):
    n1, n2, n3, v1 = _svo(rng)
    v2 = v.transitive(rng)[0]
    if rng.random() < 0.5:
        return [*n1, "who", v1, *n2, v2, *n3], [*n1, v2, *n3], "temp1"
    return [*n1, "who", *n2, v1, v2, *n3], [*n1, v2, *n3], "temp2"


def le_conjunction(rng):
    n1, n2, n3, verb = _svo(rng)
    if rng.random() < 0.5:
        return [*n1, verb, *n2, "and", *n3], [*n1, verb, *n3], "temp1"
    return [*n1, "and", *n2, verb, *n3], [*n1, verb, *n3], "temp2"


def le_passive(rng):
    (n1, pl), (n2, _) = v.nouns(rng, 2)
    past, part, _ = v.transitive(rng)
    return [*n1, v.be(pl), part, "by", *n2], [*n2, past, *n1], "temp1"


# ---- subsequence ----------------------------------------------------------------------------------
def sn_np_s(rng):
    (n1, _), (n2, _), (n3, _) = v.nouns(rng, 3)
    verb = rng.choice(v.NP_S_VERBS)[0]
    embedded = v.clause(rng, n2, n3 if rng.random() < 0.5 else None)
    return [*n1, verb, *embedded], [*n1, verb, *n2], "temp1"


def sn_pp_on_subject(rng):
    (n1, _), (n2, _), (n3, _) = v.nouns(rng, 3)
    tail = v.clause(rng, [], n3 if rng.random() < 0.5 else None)
    return [*n1, rng.choice(v.PREPOSITIONS), *n2, *tail], [*n2, *tail], "temp1" if len(tail) == 1 else "temp2"


def sn_relative_clause_on_subject(rng):
    (n1, _), (n2, _), (n3, _) = v.nouns(rng, 3)
    tail = v.clause(rng, [], n3 if rng.random() < 0.5 else None)
    rel = v.transitive(rng)[0]
    return [*n1, "who", rel, *n2, *tail], [*n2, *tail], "temp1" if len(tail) == 1 else "temp2"


def sn_past_participle(rng):
    ((n1, _),) = v.nouns(rng, 1)
    verb = rng.choice(v.OPTIONAL_OBJECT)[0]
    pp = ["in", "the", rng.choice(v.LOCATIONS)]
    return [*n1, verb, *pp, v.intransitive(rng)], [*n1, verb, *pp], "temp1"


def sn_np_z(rng):
    (n1, _), (n2, _) = v.nouns(rng, 2)
    verb = rng.choice(v.OPTIONAL_OBJECT)[0]
    sub = rng.choice(v.SUBORDINATORS_NPZ)
    return [sub, *n1, verb, *n2, v.intransitive(rng)], [*n1, verb, *n2], "temp1"


def se_conjunction(rng):
    n1, n2, n3, verb = _svo(rng)
    return [*n1, "and", *n2, verb, *n3], [*n2, verb, *n3], "temp1"


def se_adjective(rng):
    (_, subject), (obj_sg, obj_pl) = rng.sample(v.NOUNS, 2)  # a bare plural subject keeps the
    verb, adj = v.transitive(rng)[0], rng.choice(v.ADJECTIVES)  # hypothesis a contiguous subsequence
    obj = ["the", obj_pl if rng.random() < 0.3 else obj_sg]
    return [adj, subject, verb, *obj], [subject, verb, *obj], "temp1"


def se_understood_object(rng):
    ((n1, _),) = v.nouns(rng, 1)
    past, _, objects = rng.choice(v.UNDERSTOOD_OBJECT)
    return [*n1, past, "the", rng.choice(objects)], [*n1, past], "temp1"


def se_relative_clause_on_obj(rng):
    (n1, _), (n2, _), (n3, _) = v.nouns(rng, 3)
    verb = v.transitive(rng)[0]
    rel = v.clause(rng, ["who"], n3 if rng.random() < 0.5 else None)
    return [*n1, verb, *n2, *rel], [*n1, verb, *n2], "temp1" if len(rel) == 2 else "temp2"


def se_pp_on_obj(rng):
    n1, n2, n3, verb = _svo(rng)
    return [*n1, verb, *n2, rng.choice(v.PREPOSITIONS), *n3], [*n1, verb, *n2], "temp1"


# ---- constituent ----------------------------------------------------------------------------------
def _subordinate(rng, words, pick_first: bool) -> Generated:
    first, second = v.two_clauses(rng)
    premise = [rng.choice(words), *first, ",", *second]
    return premise, (first if pick_first else second), "temp1"


def _coordinate(rng, conj: str) -> Generated:
    first, second = v.two_clauses(rng)
    pick_first = rng.random() < 0.5
    return [*first, ",", conj, *second], (first if pick_first else second), "temp1" if pick_first else "temp2"


def _embedded(rng, verbs) -> Generated:
    (n1, _), (n2, _), (n3, _) = v.nouns(rng, 3)
    inner = v.clause(rng, n2, n3 if rng.random() < 0.5 else None)
    return [*n1, rng.choice(verbs)[0], "that", *inner], inner, "temp1"


def _adverb(rng, adverbs) -> Generated:
    first, _ = v.two_clauses(rng)
    return [rng.choice(adverbs), *first], first, "temp1"


SUBCASES: tuple[Subcase, ...] = (
    Subcase("ln_subject/object_swap", "lexical_overlap", "non-entailment", ln_swap),
    Subcase("ln_preposition", "lexical_overlap", "non-entailment", ln_preposition),
    Subcase("ln_relative_clause", "lexical_overlap", "non-entailment", ln_relative_clause),
    Subcase("ln_passive", "lexical_overlap", "non-entailment", ln_passive),
    Subcase("ln_conjunction", "lexical_overlap", "non-entailment", ln_conjunction),
    Subcase("le_relative_clause", "lexical_overlap", "entailment", le_relative_clause),
    Subcase("le_around_prepositional_phrase", "lexical_overlap", "entailment", le_around_pp),
    Subcase("le_around_relative_clause", "lexical_overlap", "entailment", le_around_relative_clause),
    Subcase("le_conjunction", "lexical_overlap", "entailment", le_conjunction),
    Subcase("le_passive", "lexical_overlap", "entailment", le_passive),
    Subcase("sn_NP/S", "subsequence", "non-entailment", sn_np_s),
    Subcase("sn_PP_on_subject", "subsequence", "non-entailment", sn_pp_on_subject),
    Subcase("sn_relative_clause_on_subject", "subsequence", "non-entailment", sn_relative_clause_on_subject),
    Subcase("sn_past_participle", "subsequence", "non-entailment", sn_past_participle),
    Subcase("sn_NP/Z", "subsequence", "non-entailment", sn_np_z),
    Subcase("se_conjunction", "subsequence", "entailment", se_conjunction),
    Subcase("se_adjective", "subsequence", "entailment", se_adjective),
    Subcase("se_understood_object", "subsequence", "entailment", se_understood_object),
    Subcase("se_relative_clause_on_obj", "subsequence", "entailment", se_relative_clause_on_obj),
    Subcase("se_PP_on_obj", "subsequence", "entailment", se_pp_on_obj),
    Subcase(
        "cn_embedded_under_if",
        "constituent",
        "non-entailment",
        lambda r: _subordinate(r, v.NONENTAILING_SUBORDINATORS, True),
    ),
    Subcase(
        "cn_after_if_clause",
        "constituent",
        "non-entailment",
        lambda r: _subordinate(r, v.NONENTAILING_SUBORDINATORS, False),
    ),
    Subcase("cn_embedded_under_verb", "constituent", "non-entailment", lambda r: _embedded(r, v.NONFACTIVE)),
    Subcase("cn_disjunction", "constituent", "non-entailment", lambda r: _coordinate(r, "or")),
    Subcase("cn_adverb", "constituent", "non-entailment", lambda r: _adverb(r, v.NONENTAILING_ADVERBS)),
    Subcase(
        "ce_embedded_under_since",
        "constituent",
        "entailment",
        lambda r: _subordinate(r, v.ENTAILING_SUBORDINATORS, True),
    ),
    Subcase(
        "ce_after_since_clause",
        "constituent",
        "entailment",
        lambda r: _subordinate(r, v.ENTAILING_SUBORDINATORS, False),
    ),
    Subcase("ce_embedded_under_verb", "constituent", "entailment", lambda r: _embedded(r, v.FACTIVE)),
    Subcase("ce_conjunction", "constituent", "entailment", lambda r: _coordinate(r, "and")),
    Subcase("ce_adverb", "constituent", "entailment", lambda r: _adverb(r, v.ENTAILING_ADVERBS)),
)
SUBCASE_BY_NAME = {s.name: s for s in SUBCASES}
HEURISTICS = ("lexical_overlap", "subsequence", "constituent")
