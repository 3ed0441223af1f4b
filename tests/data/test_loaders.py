"""Loaders on every format (real shared files included), malformed input, label schemes, hf datasets."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from factories import MNLI_CONTRADICTING

from fastif_core.data import (
    HANS_LABELS,
    MNLI_LABELS,
    NLIExample,
    label_index,
    labels_for,
    load_source,
    to_two_way,
)
from fastif_core.data.hub import split_spec
from fastif_core.data.loaders import DIFFICULTY_COLUMN
from fastif_core.errors import ConfigError, DataFormatError

GLUE_HEADER = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
    "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label"
)
HANS_HEADER = (
    "gold_label\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\t"
    "sentence1\tsentence2\tpairID\theuristic\tsubcase\ttemplate"
)
DEV_HEADER = f"index\tpremise\thypothesis\tgold_label\t{DIFFICULTY_COLUMN}"


def write(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def glue_row(i: int, s1: str, s2: str, label: str, genre: str = "fiction") -> str:
    return (
        f"{i}\t{100 + i}\t{100 + i}e\t{genre}\t( x )\t( y )\t(ROOT x)\t(ROOT y)\t{s1}\t{s2}\t{label}\t{label}"
    )


def jsonl_row(pair: str, s1: str, s2: str, label: str, genre: str = "slate") -> str:
    return json.dumps(
        {
            "annotator_labels": [label, label],
            "genre": genre,
            "gold_label": label,
            "pairID": pair,
            "promptID": "7",
            "sentence1": s1,
            "sentence1_binary_parse": "( a )",
            "sentence1_parse": "(ROOT a)",
            "sentence2": s2,
            "sentence2_binary_parse": "( b )",
            "sentence2_parse": "(ROOT b)",
        }
    )


# ---- label schemes -------------------------------------------------------------------------------
def test_label_schemes():
    assert labels_for(3) == MNLI_LABELS == ("entailment", "neutral", "contradiction")
    assert labels_for(2) == HANS_LABELS == ("entailment", "non-entailment")
    with pytest.raises(ConfigError, match="num_labels=4 .*allowed 2 .* or 3"):
        labels_for(4)
    assert [to_two_way(x) for x in (*MNLI_LABELS, "non-entailment")] == [
        "entailment",
        "non-entailment",
        "non-entailment",
        "non-entailment",
    ]
    with pytest.raises(DataFormatError, match="unknown label 'maybe'.*allowed entailment, neutral"):
        to_two_way("maybe")
    assert label_index("contradiction", MNLI_LABELS) == 2
    assert label_index("contradiction", HANS_LABELS) == 1  # 3-way gold on a 2-way scheme
    with pytest.raises(DataFormatError, match="unknown label 'x'"):
        label_index("x", MNLI_LABELS)


def test_record_is_frozen_hashable_and_has_key():
    ex = NLIExample("mnli:dev:12", "p", "h", "neutral", "mnli", "dev", {"genre": "fiction"})
    assert ex.key == "12" and {ex} == {ex}
    with pytest.raises(AttributeError):
        ex.label = "entailment"  # type: ignore[misc]


# ---- formats -------------------------------------------------------------------------------------
def test_mnli_jsonl(tmp_path):
    path = write(
        tmp_path / "multinli_1.0_dev_matched.jsonl",
        jsonl_row("1a", "A man sleeps.", "A person sleeps.", "entailment"),
        jsonl_row("2b", "No consensus here.", "Maybe.", "-"),
        jsonl_row("3c", "It rains.", "It is dry.", "contradiction", genre="fiction"),
    )
    res = load_source(str(path))
    assert (res.format, res.skipped_no_consensus, res.path) == ("mnli_jsonl", 1, str(path))
    a, b = res.examples
    assert (a.id, a.dataset, a.split, a.label) == ("mnli:dev_matched:1a", "mnli", "dev_matched", "entailment")
    assert (a.premise, a.hypothesis, a.slices) == ("A man sleeps.", "A person sleeps.", {"genre": "slate"})
    assert a.extra == {"annotator_labels": '["entailment", "entailment"]', "promptID": "7"}  # no parses
    assert (b.id, b.slices["genre"]) == ("mnli:dev_matched:3c", "fiction")


def test_glue_tsv_keeps_quotes_and_genre(tmp_path):
    path = write(
        tmp_path / "dev_matched.tsv",
        GLUE_HEADER,
        glue_row(0, 'He said "hi, there', "He spoke.", "entailment"),
        glue_row(1, "It's 'quoted'", 'A "b', "neutral", genre="travel"),
    )
    res = load_source(str(path))
    assert res.format == "glue_tsv" and res.skipped_no_consensus == 0
    a, b = res.examples
    assert (a.id, a.premise, a.slices) == (
        "mnli:dev_matched:100e",
        'He said "hi, there',
        {"genre": "fiction"},
    )
    assert (b.premise, b.hypothesis, b.label, b.slices["genre"]) == (
        "It's 'quoted'",
        'A "b',
        "neutral",
        "travel",
    )
    assert b.extra == {"index": "1", "promptID": "101", "label1": "neutral"}


def test_glue_tsv_with_label_column_and_crlf_bom(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes("\ufeffsentence1\tsentence2\tlabel\r\nA b.\tC d.\tcontradiction\r\n".encode())
    res = load_source(str(path))
    assert res.format == "glue_tsv"
    assert [(e.id, e.premise, e.hypothesis, e.label) for e in res.examples] == [
        ("mnli:train:0", "A b.", "C d.", "contradiction")
    ]


def test_dev_format_small(tmp_path):
    path = write(tmp_path / "dev.tsv", DEV_HEADER, "0\tP one\tH one \tneutral\t97", "1\tP two\tH two\t-\t50")
    res = load_source(str(path), dataset="MNLI", split="Dev", limit=5)
    assert res.format == "mnli_dev_tsv" and res.skipped_no_consensus == 1
    (ex,) = res.examples
    assert (ex.id, ex.hypothesis, ex.extra) == ("mnli:dev:0", "H one", {DIFFICULTY_COLUMN: "97"})


def test_real_shared_dev_file(mnli_dev_path):
    res = load_source(str(mnli_dev_path))
    assert res.format == "mnli_dev_tsv" and res.skipped_no_consensus == 0
    assert len(res.examples) == 9815
    assert Counter(e.label for e in res.examples) == {
        "entailment": 3479,
        "neutral": 3123,
        "contradiction": 3213,
    }
    assert len({e.id for e in res.examples}) == 9815
    first = res.examples[0]
    assert (first.id, first.premise, first.hypothesis) == (
        "mnli:dev_matched:0",
        "The new rights are nice enough",
        "Everyone really likes the newest benefits",
    )
    assert first.extra == {DIFFICULTY_COLUMN: "100"}
    assert all(0 <= int(e.extra[DIFFICULTY_COLUMN]) <= 100 for e in res.examples)
    assert [e.id for e in load_source(str(mnli_dev_path), limit=3).examples] == [
        e.id for e in res.examples[:3]
    ]


def test_real_contradicting_file():
    if not MNLI_CONTRADICTING.exists():
        pytest.skip(f"real MNLI data not found at {MNLI_CONTRADICTING}")
    res = load_source(str(MNLI_CONTRADICTING))
    assert res.format == "nli_triples_tsv" and len(res.examples) == 261
    assert Counter(e.label for e in res.examples) == {"contradiction": 179, "neutral": 82}
    ex = res.examples[0]
    assert (ex.id, ex.premise, ex.hypothesis) == (
        "mnli:contradicting_examples:0",
        "I am not keeping back facts.",
        "I am keeping back facts.",
    )


def test_hans_file(tmp_path):
    path = write(
        tmp_path / "heuristics_evaluation_set.txt",
        HANS_HEADER,
        "non-entailment\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tThe doctor saw the lawyer .\tThe lawyer saw the doctor .\t"
        "ex0\tlexical_overlap\tln_subject/object_swap\ttemp1",
        "entailment\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tCertainly the doctor slept .\tThe doctor slept .\t"
        "ex1\tconstituent\tce_adverb\ttemp60",
    )
    res = load_source(str(path))
    assert res.format == "hans" and [e.label for e in res.examples] == ["non-entailment", "entailment"]
    ex = res.examples[0]
    assert (ex.id, ex.dataset, ex.split, ex.extra) == ("hans:evaluation:ex0", "hans", "evaluation", {})
    assert ex.slices == {
        "heuristic": "lexical_overlap",
        "subcase": "ln_subject/object_swap",
        "template": "temp1",
    }


def test_demo_and_limits():
    res = load_source("demo", limit=50)
    assert (res.format, res.path, len(res.examples)) == ("demo", "demo:train", 50)
    assert res.examples[0].id == "demo:train:0"
    chall = load_source("demo:challenge", limit=40).examples
    assert len(chall) == 40 and {e.label for e in chall} == set(HANS_LABELS)
    renamed = load_source("demo", split="dev", dataset="toy", limit=2).examples
    assert [e.id for e in renamed] == ["toy:dev:0", "toy:dev:1"]
    with pytest.raises(ConfigError, match="demo split 'nope' is unknown: allowed train, dev"):
        load_source("demo:nope")
    with pytest.raises(ConfigError, match="limit=-1"):
        load_source("demo", limit=-1)


# ---- malformed input: every message names the file, the line and the problem ----------------------
MALFORMED = {
    "missing_column": (
        "train.tsv",
        "sentence1\tgold_label\nA.\tneutral\n",
        1,
        ["missing column 'sentence2'", "found columns: sentence1, gold_label"],
    ),
    "missing_label_column": (
        "dev.tsv",
        "index\tpremise\thypothesis\n0\tA.\tB.\n",
        1,
        ["missing column 'gold_label' (or 'label')", "found columns: index, premise"],
    ),
    "missing_hans_column": (
        "heuristics_train_set.txt",
        "gold_label\tsentence1\tsentence2\theuristic\nentailment\tA.\tB.\tconstituent\n",
        1,
        ["missing column 'subcase'"],
    ),
    "missing_json_key": (
        "x.jsonl",
        '{"gold_label": "neutral", "sentence1": "A.", "sentence2": "B."}\n'
        '{"gold_label": "neutral", "sentence1": "A."}\n',
        2,
        ["missing column 'sentence2'", "found columns: gold_label, sentence1"],
    ),
    "unknown_label": (
        "dev.tsv",
        "index\tpremise\thypothesis\tgold_label\n0\tA.\tB.\tneutral\n1\tA.\tB.\tmaybe\n",
        3,
        ["unknown label 'maybe'", "allowed entailment, neutral, contradiction"],
    ),
    "three_way_in_hans": (
        "heuristics_evaluation_set.txt",
        HANS_HEADER
        + "\n"
        + "\t".join(
            ["neutral", "(a)", "(b)", "(a)", "(b)", "A.", "B.", "ex0", "lexical_overlap", "ln_passive", "t1"]
        )
        + "\n",
        2,
        ["unknown label 'neutral'", "allowed entailment, non-entailment"],
    ),
    "unknown_label_triples": (
        "c.tsv",
        "A.\tB.\tneutral\nC.\tD.\tNEUTRAL\nE.\tF.\tsure\n",
        3,
        ["unknown label 'sure'"],
    ),
    "empty": ("empty.tsv", "", 1, ["empty file"]),
    "blank_lines_only": ("blank.jsonl", "\n  \n\n", 1, ["empty file"]),
    "latin1": (
        "dev.tsv",
        "index\tpremise\thypothesis\tgold_label\n0\tA.\tB.\tneutral\n1\tcaf\xe9\tB.\tneutral\n",
        3,
        ["not UTF-8", "byte 0xe9 at byte offset 57", "re-save the file as UTF-8"],
    ),
    "too_few_fields": (
        "dev.tsv",
        DEV_HEADER + "\n0\tA.\tB.\tneutral\t100\n1\tA.\tB.\n",
        3,
        ["row has 3 tab-separated field(s), expected 5", "index, premise, hypothesis"],
    ),
    "too_many_fields": (
        "c.tsv",
        "A.\tB.\tneutral\nA\tB.\tC.\tneutral\n",
        2,
        ["row has 4 tab-separated field(s), expected 3", "tab inside a text"],
    ),
    "invalid_json": (
        "x.jsonl",
        '{"gold_label": "neutral", "sentence1": "A.", "sentence2": "B."}\n{"gold_label": \n',
        2,
        ["invalid JSON"],
    ),
    "json_not_object": ("x.jsonl", "[1, 2]\n", 1, ["expected a JSON object, found list"]),
    "header_only": ("dev.tsv", DEV_HEADER + "\n", 2, ["no data rows after the header"]),
    "unrecognised": ("notes.txt", "hello world\nmore\n", 1, ["unrecognised format", "'hello world'"]),
    "duplicate_id": (
        "dev.tsv",
        DEV_HEADER + "\n7\tA.\tB.\tneutral\t1\n7\tC.\tD.\tneutral\t1\n",
        3,
        ["duplicate id '7' in column 'index'", "dev.tsv:2)"],
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_files_name_file_line_and_problem(tmp_path, case):
    name, text, line, fragments = MALFORMED[case]
    path = tmp_path / name
    path.write_bytes(text.encode("latin-1" if case == "latin1" else "utf-8"))
    with pytest.raises(DataFormatError) as info:
        load_source(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    for fragment in fragments:
        assert fragment in message, message


def test_utf16_file_is_reported_as_not_utf8(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text(DEV_HEADER + "\n0\tA.\tB.\tneutral\t1\n", encoding="utf-16")
    with pytest.raises(DataFormatError, match=r"dev.tsv:1: not UTF-8 text \(byte 0xff at byte offset 0"):
        load_source(str(path))


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(DataFormatError, match="nope.tsv: no such file .*'demo'.*'hf:<dataset>"):
        load_source(str(tmp_path / "nope.tsv"))
    with pytest.raises(DataFormatError, match="is a directory, not a data file"):
        load_source(str(tmp_path))


# ---- hf: datasets saved to disk (no hub here) --------------------------------------------------------
def _glue_like(datasets):
    features = datasets.Features(
        {
            "premise": datasets.Value("string"),
            "hypothesis": datasets.Value("string"),
            "label": datasets.ClassLabel(names=list(MNLI_LABELS)),
            "idx": datasets.Value("int32"),
        }
    )
    val = {
        "premise": ["A.", "B.", "C."],
        "hypothesis": ["a.", "b.", "c."],
        "label": [2, -1, 0],
        "idx": [5, 6, 7],
    }
    train = {"premise": ["T."], "hypothesis": ["t."], "label": [1], "idx": [0]}
    return datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(train, features=features),
            "validation_matched": datasets.Dataset.from_dict(val, features=features),
        }
    )


def test_hf_load_from_disk_glue_style(tmp_path):
    datasets = pytest.importorskip("datasets")
    root = tmp_path / "glue_mnli"
    _glue_like(datasets).save_to_disk(str(root))
    res = load_source(f"hf:{root}:validation_matched")
    assert (res.format, res.skipped_no_consensus) == ("hf", 1)
    assert [(e.id, e.label) for e in res.examples] == [
        ("glue_mnli:validation_matched:5", "contradiction"),
        ("glue_mnli:validation_matched:7", "entailment"),
    ]
    default = load_source(str(root))  # a saved dataset directory also works without the hf: prefix
    assert [(e.id, e.label, e.split) for e in default.examples] == [("glue_mnli:train:0", "neutral", "train")]
    with pytest.raises(DataFormatError, match="no split 'test'; available splits: train, validation_matched"):
        load_source(f"hf:{root}:test")


def test_hf_multi_nli_and_hans_columns(tmp_path):
    datasets = pytest.importorskip("datasets")
    mnli = datasets.Dataset.from_dict(
        {
            "promptID": [1],
            "pairID": ["1e"],
            "premise": ["P."],
            "premise_parse": ["(ROOT P)"],
            "hypothesis": ["H."],
            "genre": ["travel"],
            "label": [0],
        },
        features=datasets.Features(
            {
                **{
                    k: datasets.Value("string")
                    for k in ("pairID", "premise", "premise_parse", "hypothesis", "genre")
                },
                "promptID": datasets.Value("int32"),
                "label": datasets.ClassLabel(names=list(MNLI_LABELS)),
            }
        ),
    )
    mnli.save_to_disk(str(tmp_path / "multi_nli"))
    (ex,) = load_source(f"hf:{tmp_path / 'multi_nli'}", dataset="mnli", split="validation").examples
    assert (ex.id, ex.label, ex.slices, ex.extra) == (
        "mnli:validation:1e",
        "entailment",
        {"genre": "travel"},
        {"promptID": "1"},
    )
    hans = datasets.Dataset.from_dict(
        {
            "premise": ["The doctor saw the lawyer."],
            "hypothesis": ["The lawyer saw the doctor."],
            "label": [1],
            "heuristic": ["lexical_overlap"],
            "subcase": ["ln_subject/object_swap"],
            "template": ["temp1"],
        },
    ).cast_column("label", datasets.ClassLabel(names=list(HANS_LABELS)))
    datasets.DatasetDict({"validation": hans}).save_to_disk(str(tmp_path / "hans"))
    (ex,) = load_source(f"hf:{tmp_path / 'hans'}:validation").examples
    assert (ex.id, ex.label, ex.slices["subcase"]) == (
        "hans:validation:0",
        "non-entailment",
        "ln_subject/object_swap",
    )


def test_hf_errors(tmp_path):
    datasets = pytest.importorskip("datasets")
    plain = datasets.Dataset.from_dict({"premise": ["P."], "hypothesis": ["H."], "label": [0]})
    plain.save_to_disk(str(tmp_path / "ints"))
    with pytest.raises(DataFormatError, match="column 'label' holds int64 values without ClassLabel names"):
        load_source(f"hf:{tmp_path / 'ints'}")
    datasets.Dataset.from_dict({"text": ["x"], "label": ["neutral"]}).save_to_disk(str(tmp_path / "text"))
    with pytest.raises(
        DataFormatError, match=r"text: missing column 'premise' \(or 'sentence1'\); found columns: text"
    ):
        load_source(f"hf:{tmp_path / 'text'}")
    strings = datasets.Dataset.from_dict(
        {"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": ["neutral", "x"]}
    )
    strings.save_to_disk(str(tmp_path / "strings"))
    with pytest.raises(DataFormatError, match=r"strings row 1: unknown label 'x'"):
        load_source(f"hf:{tmp_path / 'strings'}")


def test_hf_spec_parsing():
    assert split_spec("glue/mnli:validation_matched") == ("glue/mnli", "validation_matched")
    assert split_spec("multi_nli") == ("multi_nli", None)
    assert split_spec("/data/saved") == ("/data/saved", None)
