"""The classifier: loading, freezing, encoding, training, checkpoints, probabilities and pooled features."""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from factories import PAIRS, make_tiny_bert, make_tiny_tokenizer
from transformers import DistilBertConfig, DistilBertForSequenceClassification

from fastif_core.config import TrainConfig
from fastif_core.data import HANS_LABELS, MNLI_LABELS, NLIExample, load_source
from fastif_core.errors import ConfigError, DataFormatError, WorkspaceError
from fastif_core.modeling.classifier import (
    collapse_to_two_way,
    count_trainable,
    default_model_path,
    encode,
    freeze_layers,
    infer,
    load_checkpoint,
    load_classifier,
    pooled_features,
    predict_proba,
    save_checkpoint,
    train_classifier,
    training_batches,
)

NEGATIONS = {"not", "no", "never", "nobody", "nothing", "none", "n't"}


def _examples(n: int = 12) -> list[NLIExample]:
    """Real sentence pairs (the factories' list), cycled, with MNLI labels."""
    rows = [PAIRS[i % len(PAIRS)] for i in range(n)]
    return [NLIExample(f"t:x:{i}", p, h, MNLI_LABELS[y], "t", "x") for i, (p, h, y) in enumerate(rows)]


@pytest.fixture(scope="module")
def minilm():
    return load_classifier(default_model_path(), 3)


@pytest.fixture
def one_thread():
    """Two shared cores: one intra-op thread avoids oversubscription (several times faster under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_packaged_minilm_loads_as_3way_eager_classifier(minilm, caplog, capfd):
    model, tok = minilm
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config._attn_implementation == "eager"
    assert model.config.id2label == dict(enumerate(MNLI_LABELS)) and not model.training
    enc = encode(tok, _examples(5), MNLI_LABELS, 64)
    batch = enc.collate(range(5))
    batch.pop("labels")
    with torch.inference_mode():
        assert model(**batch).logits.shape == (5, 3)
    capfd.readouterr()
    with caplog.at_level(logging.WARNING):
        again, _ = load_classifier(default_model_path(), 3)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert capfd.readouterr().err == ""  # no transformers load report or progress bar for a fresh head
    assert torch.equal(again.classifier.weight, model.classifier.weight)  # the head is seeded


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(WorkspaceError, match="does not exist"):
        load_classifier(tmp_path / "nope", 3)
    with pytest.raises(WorkspaceError, match="config.json is missing"):
        load_classifier(tmp_path, 3)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(WorkspaceError, match="cannot be loaded"):
        load_classifier(tmp_path, 3)  # no weights, no tokenizer
    model, tok = make_tiny_bert(0, 3), make_tiny_tokenizer()
    save_checkpoint(model, tok, tmp_path / "ckpt", TrainConfig(), {})
    with pytest.raises(ConfigError, match="3-way classifier but labels=2"):
        load_classifier(tmp_path / "ckpt", 2)


def test_freeze_layers_counts(minilm):
    model, _ = minilm
    total = sum(p.numel() for p in model.parameters())
    emb = sum(p.numel() for p in model.bert.embeddings.parameters())
    per_layer = sum(p.numel() for p in model.bert.encoder.layer[0].parameters())
    try:
        assert freeze_layers(model, 0, embeddings=False) == total
        assert freeze_layers(model, 0) == total - emb  # embeddings frozen by default, as in the paper
        assert freeze_layers(model, 2, embeddings=False) == total - 2 * per_layer
        for n in (1, 4, 6):
            assert freeze_layers(model, n) == total - emb - n * per_layer == count_trainable(model)
        assert not model.bert.encoder.layer[3].attention.self.query.weight.requires_grad
        assert freeze_layers(model, 2) == total - emb - 2 * per_layer  # idempotent: unfreezes first
        assert model.bert.encoder.layer[3].attention.self.query.weight.requires_grad
        with pytest.raises(ConfigError, match=r"freeze_layers=7 .*allowed 0\.\.6"):
            freeze_layers(model, 7)
    finally:
        freeze_layers(model, 0, embeddings=False)


def test_freeze_layers_finds_other_encoder_layouts():
    cfg = DistilBertConfig(
        vocab_size=30522, dim=32, n_layers=3, n_heads=2, hidden_dim=64, max_position_embeddings=64
    )
    model = DistilBertForSequenceClassification(cfg)
    frozen = sum(p.numel() for p in model.distilbert.embeddings.parameters())
    frozen += sum(p.numel() for p in model.distilbert.transformer.layer[:2].parameters())
    assert freeze_layers(model, 2) == sum(p.numel() for p in model.parameters()) - frozen


def test_encode_collate_round_trip():
    tok, examples = make_tiny_tokenizer(), _examples(8)
    enc = encode(tok, examples, MNLI_LABELS, 64)
    batch = enc.collate([5, 0, 2])
    for row, i in enumerate([5, 0, 2]):
        ref = tok(examples[i].premise, examples[i].hypothesis)
        n = int(batch["attention_mask"][row].sum())
        assert batch["input_ids"][row, :n].tolist() == ref["input_ids"]
        assert batch["token_type_ids"][row, :n].tolist() == ref["token_type_ids"]
        assert (batch["input_ids"][row, n:] == tok.pad_token_id).all()
        assert int(batch["labels"][row]) == MNLI_LABELS.index(examples[i].label)
    two_way = encode(tok, examples, HANS_LABELS, 64).labels
    assert two_way.tolist() == [0 if ex.label == "entailment" else 1 for ex in examples]
    assert max(encode(tok, examples, MNLI_LABELS, 8).lengths()) == 8


def test_encode_in_chunks_equals_one_call(monkeypatch: pytest.MonkeyPatch):
    """Chunked tokenisation (3 pairs per call here) gives the ids, types and labels of a single call."""
    import fastif_core.modeling.classifier as C

    tok, examples = make_tiny_tokenizer(), _examples(11)
    whole = encode(tok, examples, MNLI_LABELS, 64)
    monkeypatch.setattr(C, "ENCODE_CHUNK", 3)
    chunked = encode(tok, examples, MNLI_LABELS, 64)
    ref = tok([e.premise for e in examples], [e.hypothesis for e in examples], truncation=True, max_length=64)
    assert chunked.input_ids == whole.input_ids == [list(x) for x in ref["input_ids"]]
    assert chunked.token_type_ids == whole.token_type_ids == [list(x) for x in ref["token_type_ids"]]
    assert torch.equal(chunked.labels, whole.labels)
    assert len(encode(tok, [], MNLI_LABELS, 64)) == 0


def test_encode_rejects_unknown_label_naming_the_example():
    bad = [NLIExample("t:x:9", "A cat sat.", "A cat.", "maybe", "t", "x")]
    with pytest.raises(DataFormatError, match=r"t:x:9.*'maybe'"):
        encode(make_tiny_tokenizer(), bad, MNLI_LABELS, 32)


def test_collapse_to_two_way():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    torch.testing.assert_close(collapse_to_two_way(probs), torch.tensor([[0.7, 0.3], [0.1, 0.9]]))
    with pytest.raises(ConfigError, match=r"\(N, 3\)"):
        collapse_to_two_way(torch.ones(2, 2))


def test_predict_proba_sums_to_one_and_keeps_input_order(one_thread):
    model, tok = make_tiny_bert(1, 3), make_tiny_tokenizer()
    enc = encode(tok, _examples(11), MNLI_LABELS, 64)
    probs = predict_proba(model, enc, batch_size=3)  # length-sorted batches of 3, padded
    torch.testing.assert_close(probs.sum(1), torch.ones(11))
    for i in range(11):  # one unpadded example at a time is the reference
        batch = enc.collate([i])
        batch.pop("labels")
        with torch.no_grad():
            ref = torch.softmax(model(**batch).logits, -1)[0]
        torch.testing.assert_close(probs[i], ref, atol=1e-5, rtol=1e-5)


def test_pooled_features_are_what_the_head_sees():
    model, tok = make_tiny_bert(2, 3), make_tiny_tokenizer()
    enc = encode(tok, _examples(9), MNLI_LABELS, 64)
    probs, feats = infer(model, enc, batch_size=4)
    assert feats is not None and feats.shape == (9, 32) and feats.dtype == torch.float32
    torch.testing.assert_close(pooled_features(model, enc, 2), feats, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(torch.softmax(model.classifier(feats), -1), probs, atol=1e-5, rtol=1e-5)


def test_infer_reports_the_examples_done_up_to_all():
    model, tok = make_tiny_bert(2, 3), make_tiny_tokenizer()
    enc = encode(tok, _examples(9), MNLI_LABELS, 64)
    seen: list[tuple[float, str]] = []
    probs, _ = infer(model, enc, batch_size=4, on_progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert (
        fractions == sorted(fractions) and fractions[-1] == 1.0 and seen[-1][1] == "featurising: 9/9 examples"
    )
    assert probs.shape == (9, 3)


def test_features_fall_back_to_cls_state_without_pooler():
    torch.manual_seed(0)
    cfg = DistilBertConfig(
        vocab_size=30522, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64
    )
    model = DistilBertForSequenceClassification(cfg).eval()
    enc = encode(make_tiny_tokenizer(), _examples(4), MNLI_LABELS, 64)
    enc.token_type_ids = None  # DistilBERT has no segment embeddings
    batch = enc.collate(range(4))
    with torch.no_grad():
        cls = model.distilbert(batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state[
            :, 0
        ]
    torch.testing.assert_close(pooled_features(model, enc, 4), cls, atol=1e-5, rtol=1e-5)


def test_training_batches_cover_each_epoch_once():
    lengths = torch.randint(5, 60, (103,), generator=torch.Generator().manual_seed(0))
    for bucketed in (False, True):
        it = training_batches(lengths, 8, torch.Generator().manual_seed(1), bucketed)
        epoch = [next(it) for _ in range(13)]  # ceil(103 / 8)
        assert sorted(i for b in epoch for i in b) == list(range(103))


def test_checkpoint_round_trip_gives_identical_predictions(tmp_path, one_thread):
    model, tok = make_tiny_bert(3, 3), make_tiny_tokenizer()
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-3, freeze_layers=1, seed=5)
    freeze_layers(model, cfg.freeze_layers)
    enc = encode(tok, _examples(12), MNLI_LABELS, 64)
    metrics = train_classifier(model, enc, cfg, progress=False)
    root = save_checkpoint(model, tok, tmp_path / "model", cfg, metrics)
    names = {p.name for p in root.iterdir()}
    assert "model.safetensors" in names and "fastif_train.json" in names
    assert not [n for n in names if re.search(r"\.(bin|pt|pth|pkl)$", n)]
    loaded, tok2, cfg2, metrics2 = load_checkpoint(root)
    assert cfg2 == cfg and metrics2 == json.loads(json.dumps(metrics))
    assert torch.equal(
        predict_proba(loaded, encode(tok2, _examples(12), MNLI_LABELS, 64)), predict_proba(model, enc)
    )
    assert [p.requires_grad for p in loaded.parameters()] == [p.requires_grad for p in model.parameters()]
    with pytest.raises(WorkspaceError, match="fastif_train.json is missing"):
        load_checkpoint(tmp_path)


def test_training_is_seeded_and_reports_progress(one_thread):
    enc = encode(make_tiny_tokenizer(), _examples(16), MNLI_LABELS, 64)
    cfg = TrainConfig(epochs=1.5, batch_size=4, lr=1e-3, seed=7)
    calls: list[tuple[float, str]] = []
    runs = []
    for _ in range(2):
        model = make_tiny_bert(0, 3)
        metrics = train_classifier(
            model, enc, cfg, progress=False, on_progress=lambda f, m: calls.append((f, m))
        )
        runs.append(model.classifier.weight.detach().clone())
    assert torch.equal(runs[0], runs[1]) and metrics["steps"] == 6
    assert calls[-1][0] == 1.0 and "step 6/6" in calls[-1][1]
    assert len(metrics["loss_curve"]) == 6 and metrics["seconds"] > 0 and not model.training


def _negation_task(path, n_per_class: int) -> list[NLIExample]:
    """Real MNLI pairs labelled by a learnable rule: a negation word in the hypothesis -> non-entailment."""
    negated, plain = [], []
    for ex in load_source(str(path), limit=6000).examples:
        words = set(ex.hypothesis.lower().replace("n't", " n't").replace(".", " ").split())
        label = "non-entailment" if words & NEGATIONS else "entailment"
        (negated if words & NEGATIONS else plain).append(
            NLIExample(ex.id, ex.premise, ex.hypothesis, label, "t", "x")
        )
    rows = [r for pair in zip(negated[:n_per_class], plain[:n_per_class], strict=True) for r in pair]
    assert len(rows) == 2 * n_per_class
    return rows


def test_training_beats_chance_on_held_out_real_pairs(mnli_dev_path, one_thread):
    rows = _negation_task(mnli_dev_path, 650)  # balanced: chance is 50%
    tok, train, held_out = make_tiny_tokenizer(), rows[:1000], rows[1000:]
    cfg = TrainConfig(epochs=3, batch_size=16, lr=2e-3, max_length=64, labels=2, seed=0)
    model = make_tiny_bert(0, 2)
    metrics = train_classifier(model, encode(tok, train, HANS_LABELS, 64), cfg, progress=False)
    test = encode(tok, held_out, HANS_LABELS, 64)
    accuracy = float((predict_proba(model, test).argmax(1) == test.labels).float().mean())
    assert metrics["steps"] == 189 and metrics["loss_last"] < metrics["loss_first"]
    assert accuracy > 0.8, accuracy


@pytest.mark.gpu
def test_training_and_inference_on_cuda_match_cpu():
    enc = encode(make_tiny_tokenizer(), _examples(16), MNLI_LABELS, 64)
    model = make_tiny_bert(0, 3)
    metrics = train_classifier(
        model, enc, TrainConfig(epochs=1, batch_size=4, lr=1e-3), device="cuda", amp=False
    )
    assert metrics["device"] == "cuda:0" and next(model.parameters()).is_cuda
    probs_gpu, feats_gpu = infer(model, enc, 5, device="cuda")
    probs_cpu, feats_cpu = infer(model.cpu(), enc, 5, device="cpu")
    torch.testing.assert_close(probs_gpu, probs_cpu, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(feats_gpu, feats_cpu, atol=1e-4, rtol=1e-4)
    bf16 = make_tiny_bert(0, 3)
    assert train_classifier(bf16, enc, TrainConfig(epochs=1, batch_size=4), device="cuda", amp=True)[
        "amp_bf16"
    ]


@pytest.mark.parametrize("build", ["tiny_bert", "unnamed_layernorm"])
def test_adamw_decays_exactly_the_parameters_of_the_influence_l2_term(build):
    """One weight-decay rule: training's AdamW groups equal the objective's decayed set, also for a
    LayerNorm whose name says nothing ("1.weight") and a bias-like name that does not end in "bias"."""
    from torch import nn

    from fastif_core.engine.objective import Objective, tensor_forward
    from fastif_core.modeling.classifier import _optimizer

    if build == "tiny_bert":
        model = make_tiny_bert(0)
    else:
        model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
        model.register_parameter("bias_table", nn.Parameter(torch.zeros(3)))
    obj = Objective(model, forward=tensor_forward, weight_decay=0.01)
    decay_group, no_decay_group = _optimizer(model, TrainConfig(weight_decay=0.01)).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay_group["params"]) == sorted(obj.decayed)
    assert decay_group["weight_decay"] == 0.01 and no_decay_group["weight_decay"] == 0.0
    assert sorted(names[id(p)] for p in no_decay_group["params"]) == sorted(set(obj.names) - set(obj.decayed))
