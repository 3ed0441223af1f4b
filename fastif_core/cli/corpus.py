"""``fastif corpus``: the built-in corpus as files other tools (and ``fastif prepare``) read.

Without ``--train-size``: the challenge set in the official HANS format. With ``--train-size N``: a training
file of N distinct labelled pairs (:mod:`fastif_core.data.training_file`), MNLI-style TSV."""

from __future__ import annotations

import argparse
from pathlib import Path

from fastif_core.cli.options import positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "corpus",
        help="write the built-in corpus's challenge set (HANS format) or a training file of any size",
        description="Without --train-size: the challenge set in the official HANS format. With --train-size N: "
        "N distinct labelled premise/hypothesis pairs (balanced labels, five genres, 4 to ~90-word premises), "
        "deterministic by --seed, as MNLI-style TSV that `fastif prepare --train FILE` reads.",
    )
    p.add_argument("--out", type=Path, required=True, help="output file, e.g. heuristics_evaluation_set.txt")
    p.add_argument(
        "--train-size",
        type=positive_int,
        default=None,
        metavar="N",
        help="write a training file of N pairs instead (e.g. 400000, MNLI's size)",
    )
    p.add_argument("--seed", type=int, default=0, help="corpus seed")
    p.set_defaults(func=cmd_corpus)


def cmd_corpus(a: argparse.Namespace) -> int:
    if a.train_size is not None:
        from fastif_core.data.training_file import write_training_file

        summary = write_training_file(a.out, a.train_size, seed=a.seed)
        print(
            f"wrote {summary.rows} training pairs ({len(summary.labels)} labels, {len(summary.genres)} genres; "
            f"MNLI-style TSV) to {a.out}"
        )
        return 0
    from fastif_core.data.demo import demo_corpus, write_hans_format

    challenge = demo_corpus(seed=a.seed)["challenge"]
    write_hans_format(challenge, a.out)
    print(f"wrote {len(challenge)} HANS-format examples to {a.out}")
    return 0
