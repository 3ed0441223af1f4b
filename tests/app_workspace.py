"""A tiny prepared workspace for the dashboard tests (temporary: filled through the Store API until
the prepare pipeline lands)."""

from __future__ import annotations

import random
from pathlib import Path

from fastif_core.config import InfluenceConfig, to_dict
from fastif_core.data.demo import demo_corpus
from fastif_core.query import cache_key
from fastif_core.store import InfluenceRunInfo, PredictionIn, Store
from fastif_core.workspace import read_manifest, write_manifest

LABELS = ["entailment", "neutral", "contradiction"]


def build_tiny_workspace(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    corpus = demo_corpus(seed=0, train_size=40)
    train, challenge = corpus["train"], corpus["challenge"][:60]
    rng = random.Random(0)
    with Store.open(root) as store:
        store.add_examples(train + challenge)
        store.set_training_set([e.id for e in train])
        model = store.get_or_create_model("tiny", str(root / "model"), {"epochs": 1}, LABELS)
        preds = []
        for e in train + challenge:
            probs = [rng.random() for _ in LABELS]
            probs = [p / sum(probs) for p in probs]
            best = LABELS[max(range(3), key=probs.__getitem__)]
            if e.label == "non-entailment" or (e.label == "entailment" and e.split == "challenge"):
                best = best if best == "entailment" else "non-entailment"
            preds.append(PredictionIn(e.id, probs, best, best == e.label))
        store.save_predictions(model.id, preds)
        store.save_neighbors(
            model.id, {e.id: [(t.id, 0.1 * i) for i, t in enumerate(train[:5])] for e in train + challenge}
        )
    write_manifest(root, {"status": "ready", "model_id": model.id, "num_train": len(train),
                          "num_examples": len(train) + len(challenge), "labels": LABELS})  # fmt: skip
    return root


def store_run(root: Path, example_id: str, cfg: InfluenceConfig) -> InfluenceRunInfo:
    manifest = read_manifest(root)
    rng = random.Random(1)
    with Store.open(root) as store:
        train = store.train_ids()[: cfg.k]
        scores = [(t, rng.uniform(-1, 1)) for t in train]
        run_id = store.save_influence_run(
            manifest["model_id"], example_id, {**to_dict(cfg), "cache_key": cache_key(cfg)}, scores
        )
        return store.get_influence_run(run_id)
