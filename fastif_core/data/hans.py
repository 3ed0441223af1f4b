"""The official HANS file format (McCoy et al. 2019): writing it, with plausible parse bracketings.

Reading is done by :func:`fastif_core.data.loaders.load_source`, which detects the format from the
header. The parse columns are written so that tools expecting them find well-formed trees; they
are derived from a small part-of-speech lexicon and a flat chunking, not from a parser.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from fastif_core.data import vocab as v
from fastif_core.data.records import HANS_LABELS, NLIExample, to_two_way
from fastif_core.errors import DataFormatError

HANS_COLUMNS: tuple[str, ...] = (
    "gold_label",
    "sentence1_binary_parse",
    "sentence2_binary_parse",
    "sentence1_parse",
    "sentence2_parse",
    "sentence1",
    "sentence2",
    "pairID",
    "heuristic",
    "subcase",
    "template",
)
_PLURALS = {pl for _, pl in v.NOUNS}
_TAGS: dict[str, str] = {
    **{w: "DT" for w in ("the", "a", "an", "some")},
    **{w: "NN" for w in ("someone", "nobody", "people")},
    **{
        w: "IN"
        for w in (
            *v.PREPOSITIONS,
            "in",
            "by",
            "that",
            *v.ENTAILING_SUBORDINATORS,
            *v.NONENTAILING_SUBORDINATORS,
            *v.SUBORDINATORS_NPZ,
        )
    },
    **{w: "JJ" for w in v.ADJECTIVES},
    **{w: "RB" for w in (*v.ENTAILING_ADVERBS, *v.NONENTAILING_ADVERBS)},
    "not": "RB",
    "never": "RB",
    "and": "CC",
    "or": "CC",
    "who": "WP",
    "was": "VBD",
    "were": "VBD",
    "did": "VBD",
    ",": ",",
    ".": ".",
}


def tokenize(text: str) -> list[str]:
    """Words and punctuation marks as separate tokens."""
    return re.findall(r"[\w'-]+|[^\w\s]", text)


def _tag(tokens: list[str]) -> list[str]:
    tags = []
    for i, tok in enumerate(tokens):
        low, prev = tok.lower(), tokens[i - 1].lower() if i else ""
        if low in _TAGS:
            tags.append(_TAGS[low])
        elif low in v.BASE_FORM:
            tags.append("VBN" if prev in ("was", "were") else "VBD")
        elif low in v.BASE_FORM.values():
            tags.append("VB")
        elif low in _PLURALS:
            tags.append("NNS")
        else:
            tags.append("NNP" if tok[:1].isupper() and i else "NN")
    return tags


def _chunks(tokens: list[str], tags: list[str]) -> list[list[int]]:
    """Token positions grouped into noun-phrase chunks (DT JJ* NN) and single tokens."""
    chunks: list[list[int]] = []
    i = 0
    while i < len(tokens):
        j = i
        while j < len(tokens) and tags[j] in ("DT", "JJ"):
            j += 1
        if j > i and j < len(tokens) and tags[j].startswith("NN"):
            chunks.append(list(range(i, j + 1)))
            i = j + 1
        else:
            chunks.append([i])
            i += 1
    return chunks


def _leaf(tok: str) -> str:
    return {"(": "-LRB-", ")": "-RRB-"}.get(tok, tok)


def _right_branch(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"( {items[0]} {_right_branch(items[1:])} )"


def binary_parse(text: str) -> str:
    """A right-branching binary bracketing over NP chunks, e.g. ``( ( The doctor ) ( ( saw ( the lawyer ) ) . ) )``."""
    tokens = tokenize(text) or ["."]
    tags = _tag(tokens)
    units = [
        _right_branch([_leaf(tokens[i]) for i in c]) if len(c) > 1 else _leaf(tokens[c[0]])
        for c in _chunks(tokens, tags)
    ]
    if len(units) == 1:
        return f"( {units[0]} )"
    if tokens[-1] == "." and len(units) > 2:
        return f"( {units[0]} ( {_right_branch(units[1:-1])} . ) )"
    return _right_branch(units)


def parse(text: str) -> str:
    """A Penn-Treebank-style bracketing: ``(ROOT (S (NP ...) (VP ...) (. .)))`` over tagged NP chunks."""
    tokens = tokenize(text) or ["."]
    tags = _tag(tokens)
    parts = []
    for chunk in _chunks(tokens, tags):
        leaves = " ".join(f"({tags[i]} {_leaf(tokens[i])})" for i in chunk)
        parts.append(f"(NP {leaves})" if len(chunk) > 1 else leaves)
    final = [parts.pop()] if tokens[-1] == "." and len(parts) > 1 else []
    head, rest = parts[0], parts[1:]
    body = f"{head} (VP {' '.join(rest)})" if rest else head
    return f"(ROOT (S {' '.join([body, *final])}))"


def _check_text(ex: NLIExample, value: str, what: str) -> str:
    if any(c in value for c in "\t\r\n"):
        raise DataFormatError(
            f"cannot write example {ex.id!r} in HANS format: its {what} contains a tab or newline"
        )
    return value


def hans_row(ex: NLIExample) -> list[str]:
    """The 11 HANS columns of one example (3-way labels are mapped to 2-way)."""
    label = ex.label if ex.label in HANS_LABELS else to_two_way(ex.label)
    s1, s2 = _check_text(ex, ex.premise, "premise"), _check_text(ex, ex.hypothesis, "hypothesis")
    slices = [_check_text(ex, ex.slices.get(k, ""), k) for k in ("heuristic", "subcase", "template")]
    return [
        label,
        binary_parse(s1),
        binary_parse(s2),
        parse(s1),
        parse(s2),
        s1,
        s2,
        _check_text(ex, ex.key, "id"),
        *slices,
    ]


def write_hans_format(examples: Iterable[NLIExample], path: str | Path) -> Path:
    """Write ``examples`` as an official HANS file (``heuristics_*_set.txt``); returns the path.

    ``pairID`` is the example's key (its id without ``<dataset>:<split>:``), so reading the file with
    the same ``dataset`` and ``split`` gives back the same ids.
    """
    path = Path(path)
    rows = ["\t".join(HANS_COLUMNS)] + ["\t".join(hans_row(ex)) for ex in examples]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path
