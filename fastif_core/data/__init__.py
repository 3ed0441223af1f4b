"""NLI data: one record type (:class:`NLIExample`), loaders for what users bring, and the built-in corpus.

``load_source("demo")``, ``load_source("demo:challenge")``, ``load_source("path/to/file")`` (MNLI jsonl,
GLUE tsv, the shared dev tsv, headerless triples, HANS) and ``load_source("hf:glue/mnli:validation_matched")``
all return a :class:`LoadResult`.
"""

from fastif_core.data.demo import DEMO_SPLITS, demo_corpus, demo_split, write_hans_format
from fastif_core.data.loaders import LoadResult, load_file, load_source
from fastif_core.data.records import (
    HANS_LABELS,
    MNLI_LABELS,
    NO_CONSENSUS,
    SLICE_KEYS,
    NLIExample,
    label_index,
    labels_for,
    make_id,
    to_two_way,
)

__all__ = [
    "DEMO_SPLITS",
    "HANS_LABELS",
    "MNLI_LABELS",
    "NO_CONSENSUS",
    "SLICE_KEYS",
    "LoadResult",
    "NLIExample",
    "demo_corpus",
    "demo_split",
    "label_index",
    "labels_for",
    "load_file",
    "load_source",
    "make_id",
    "to_two_way",
    "write_hans_format",
]
