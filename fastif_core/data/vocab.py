"""Vocabulary and phrase builders of the built-in corpus (HANS-style templates, after McCoy et al. 2019).

Phrases are token lists (``["the", "doctor"]``); :func:`sentence` renders them. Every verb form used
in a hypothesis can be negated (:func:`negate`), which the training mixture uses for contradictions.
"""

from __future__ import annotations

import random

Tokens = list[str]

# fmt: off
NOUNS: tuple[tuple[str, str], ...] = tuple(
    (sg, sg + "s") for sg in (
        "doctor", "lawyer", "artist", "banker", "student", "senator", "president", "judge", "manager",
        "professor", "scientist", "athlete", "actor", "author", "tourist", "dancer", "farmer", "pilot",
        "teacher", "chef", "nurse", "writer", "singer", "engineer",
    )
)
# (past, past participle, base): transitive verbs taking a person as object
TRANSITIVE = (
    ("saw", "seen", "see"), ("helped", "helped", "help"), ("thanked", "thanked", "thank"),
    ("called", "called", "call"), ("recommended", "recommended", "recommend"), ("avoided", "avoided", "avoid"),
    ("admired", "admired", "admire"), ("contacted", "contacted", "contact"), ("supported", "supported", "support"),
    ("advised", "advised", "advise"), ("encouraged", "encouraged", "encourage"), ("visited", "visited", "visit"),
    ("followed", "followed", "follow"), ("met", "met", "meet"), ("found", "found", "find"),
    ("mentioned", "mentioned", "mention"), ("introduced", "introduced", "introduce"),
)
INTRANSITIVE = (
    ("slept", "sleep"), ("danced", "dance"), ("laughed", "laugh"), ("waited", "wait"), ("shouted", "shout"),
    ("ran", "run"), ("arrived", "arrive"), ("resigned", "resign"), ("smiled", "smile"), ("performed", "perform"),
    ("won", "win"), ("cried", "cry"), ("stayed", "stay"), ("swam", "swim"),
)
# verbs whose object is optional and whose past tense equals the participle (NP/Z and past-participle cases)
OPTIONAL_OBJECT = (
    ("paid", "pay"), ("helped", "help"), ("called", "call"), ("watched", "watch"), ("studied", "study"),
    ("moved", "move"), ("visited", "visit"), ("stopped", "stop"),
)
UNDERSTOOD_OBJECT = (
    ("ate", "eat", ("cake", "sandwich", "soup", "apple")), ("read", "read", ("book", "letter", "report", "newspaper")),
    ("wrote", "write", ("letter", "poem", "story", "speech")), ("painted", "paint", ("wall", "fence", "picture")),
    ("cooked", "cook", ("meal", "pasta", "dinner")), ("drank", "drink", ("tea", "coffee", "juice")),
    ("sang", "sing", ("song", "anthem")), ("cleaned", "clean", ("room", "car", "kitchen")),
    ("played", "play", ("piano", "game", "guitar")),
)
NP_S_VERBS = (("knew", "know"), ("believed", "believe"), ("heard", "hear"), ("forgot", "forget"),
              ("remembered", "remember"), ("understood", "understand"), ("suspected", "suspect"))
FACTIVE = (("knew", "know"), ("learned", "learn"), ("forgot", "forget"), ("remembered", "remember"),
           ("realized", "realize"), ("noticed", "notice"))
NONFACTIVE = (("believed", "believe"), ("thought", "think"), ("hoped", "hope"), ("assumed", "assume"),
              ("said", "say"), ("suspected", "suspect"), ("claimed", "claim"), ("imagined", "imagine"))
ADJECTIVES = ("tall", "old", "young", "famous", "happy", "smart", "shy", "busy", "tired", "rich", "quiet",
              "new")
PREPOSITIONS = ("near", "behind", "beside", "with")
LOCATIONS = ("office", "library", "hospital", "park", "museum", "garden", "school", "station", "theater",
             "hotel")
ENTAILING_ADVERBS = ("certainly", "clearly", "definitely", "obviously", "undoubtedly")
NONENTAILING_ADVERBS = ("probably", "maybe", "hopefully", "supposedly", "perhaps", "possibly")
ENTAILING_SUBORDINATORS = ("since", "because", "although", "after", "while")
NONENTAILING_SUBORDINATORS = ("if", "unless")
SUBORDINATORS_NPZ = ("since", "before", "after", "while", "because", "when")

BASE_FORM: dict[str, str] = {
    **{past: base for past, _, base in TRANSITIVE},
    **dict(INTRANSITIVE), **dict(OPTIONAL_OBJECT), **{past: base for past, base, _ in UNDERSTOOD_OBJECT},
    **dict(NP_S_VERBS), **dict(FACTIVE), **dict(NONFACTIVE),
}
# fmt: on


def sentence(tokens: Tokens) -> str:
    """Render tokens as a sentence: capitalised, commas attached, final period."""
    text = " ".join(tokens).replace(" ,", ",")
    return text[:1].upper() + text[1:] + "."


def nouns(rng: random.Random, k: int, plural_p: float = 0.3) -> list[tuple[Tokens, bool]]:
    """``k`` distinct definite noun phrases ``(["the", "doctor"], is_plural)``."""
    picked = rng.sample(NOUNS, k)
    out = []
    for sg, pl in picked:
        plural = rng.random() < plural_p
        out.append((["the", pl if plural else sg], plural))
    return out


def be(plural: bool) -> str:
    return "were" if plural else "was"


def transitive(rng: random.Random) -> tuple[str, str, str]:
    return rng.choice(TRANSITIVE)


def intransitive(rng: random.Random) -> str:
    return rng.choice(INTRANSITIVE)[0]


def clause(rng: random.Random, subject: Tokens, obj: Tokens | None) -> Tokens:
    """``subject`` + a past-tense VP: transitive with ``obj`` when given, else intransitive."""
    if obj is None:
        return [*subject, intransitive(rng)]
    return [*subject, transitive(rng)[0], *obj]


def two_clauses(rng: random.Random) -> tuple[Tokens, Tokens]:
    """Two clauses over distinct people, each intransitive or transitive."""
    (a, _), (b, _), (c, _), (d, _) = nouns(rng, 4)
    first = clause(rng, a, c if rng.random() < 0.5 else None)
    second = clause(rng, b, d if rng.random() < 0.5 else None)
    return first, second


def subject_length(tokens: Tokens) -> int:
    """Number of tokens of a clause's subject noun phrase (``the doctor`` → 2, bare ``doctors`` → 1)."""
    return 2 if tokens[0] in ("the", "a") else 1


def negate(tokens: Tokens, rng: random.Random) -> Tokens:
    """Negate a simple past-tense clause: ``saw`` → ``did not see`` / ``never saw``; ``was`` → ``was not``."""
    for i, word in enumerate(tokens):
        if word in ("was", "were"):
            return [*tokens[: i + 1], "not", *tokens[i + 1 :]]
        if word in BASE_FORM:
            verb = ["never", word] if rng.random() < 0.3 else ["did", "not", BASE_FORM[word]]
            return [*tokens[:i], *verb, *tokens[i + 1 :]]
    raise ValueError(f"no verb to negate in {' '.join(tokens)!r}")


LEMMA: dict[str, str] = {**BASE_FORM, **{part: base for _, part, base in TRANSITIVE}}


def content_overlap(premise: str, hypothesis: str) -> float:
    """Share of the hypothesis's words found in the premise (lower case, verbs lemmatised, no punctuation)."""

    def lemmas(text: str) -> list[str]:
        return [LEMMA.get(w, w) for w in text.lower().replace(",", " ").replace(".", " ").split()]

    p, h = set(lemmas(premise)), lemmas(hypothesis)
    return sum(w in p for w in h) / max(len(h), 1)
