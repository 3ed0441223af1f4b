"""``prepare``: the workspace it builds is complete and consistent, and re-runs reuse it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from factories import save_tiny_checkpoint, tiny_prepare_config

from fastif_core.config import TrainConfig
from fastif_core.prepare import prepare, split_train_source
from fastif_core.store import Store
from fastif_core.workspace import LoadedWorkspace, WorkspacePaths, load_features, read_manifest


def test_workspace_is_complete(tiny_workspace_template: Path):
    manifest = read_manifest(tiny_workspace_template)
    assert manifest["status"] == "ready" and manifest["num_train"] == 60
    store = Store.open(tiny_workspace_template)
    try:
        train_ids = store.train_ids()
        assert len(train_ids) == 60 and len(set(train_ids)) == 60
        preds = store.get_predictions(manifest["model_id"])
        assert len(preds) == manifest["num_examples"]  # every example has a prediction
        for ex_id in train_ids[:5] + ["demo-hans:challenge:ex0"]:
            neighbors = store.get_neighbors(manifest["model_id"], ex_id)
            assert len(neighbors) == 5
            assert ex_id not in [n.train_id for n in neighbors]  # not its own neighbour
            assert all(n.train_id in set(train_ids) for n in neighbors)
            assert [n.distance for n in neighbors] == sorted(n.distance for n in neighbors)
    finally:
        store.close()
    feats, ids = load_features(WorkspacePaths(tiny_workspace_template).features)
    assert ids[:60] == train_ids and feats.shape == (manifest["num_examples"], manifest["feature_dim"])


def test_each_training_example_is_its_own_nearest_neighbour(tiny_workspace_template: Path):
    loaded = LoadedWorkspace.load(tiny_workspace_template)
    for pos, ex_id in enumerate(loaded.train_ids):
        positions, distances = loaded.nearest(ex_id, 1)
        assert distances[0] == pytest.approx(0.0, abs=1e-4)
        # duplicates in the corpus may tie at distance 0; then the tie must be an identical vector
        assert positions[0] == pos or torch.allclose(loaded.features[positions[0]], loaded.features[pos])


def test_rerun_reuses_and_changed_settings_rebuild(tmp_path: Path):
    model = save_tiny_checkpoint(tmp_path / "base")
    cfg = tiny_prepare_config(model, demo_size=40)
    first = prepare(tmp_path / "ws", cfg, show_progress=False)
    again = prepare(tmp_path / "ws", cfg, show_progress=False)
    assert first["reused"] is False and again["reused"] is True
    assert again["model_id"] == first["model_id"]
    more = prepare(tmp_path / "ws", dataclasses.replace(cfg, neighbors=3), show_progress=False)
    assert more["reused"] is False
    assert more["model_id"] == first["model_id"]  # same training key: the checkpoint is reused
    assert more["train_seconds"] == 0.0


def test_two_way_workspace(tmp_path: Path):
    model = save_tiny_checkpoint(tmp_path / "base", num_labels=2)
    cfg = tiny_prepare_config(model, demo_size=40)
    cfg = dataclasses.replace(cfg, train_config=dataclasses.replace(cfg.train_config, labels=2))
    manifest = prepare(tmp_path / "ws", cfg, show_progress=False)
    assert manifest["labels"] == ["entailment", "non-entailment"]
    store = Store.open(tmp_path / "ws")
    try:
        labels = {r.label for r in store.query_examples(split="train", limit=None)}
    finally:
        store.close()
    assert labels == {"entailment", "non-entailment"}


def test_holdout_and_max_train_split():
    from fastif_core.config import PrepareConfig
    from fastif_core.data import demo_split

    examples = demo_split("train", size=100)
    train, held = split_train_source(examples, PrepareConfig(holdout=0.2, max_train=50))
    assert len(held) == 20 and len(train) == 50
    assert not {e.id for e in train} & {e.id for e in held}


@pytest.mark.slow
def test_packaged_minilm_learns_the_demo_shortcut(tmp_path: Path):
    """The packaged MiniLM fine-tuned on the built-in corpus beats chance on held-out data and learns the
    lexical-overlap shortcut: on the challenge set, non-entailment accuracy is clearly below entailment."""
    train = TrainConfig(epochs=1, batch_size=16, lr=1e-4, max_length=40, freeze_layers=3, seed=0)
    cfg = dataclasses.replace(tiny_prepare_config(None, demo_size=1600), train_config=train)
    manifest = prepare(tmp_path / "ws", cfg, show_progress=False)
    dev = manifest["accuracy"]["demo/dev"]
    assert dev["accuracy"] > 0.6  # chance is 1/3
    by_label = manifest["accuracy"]["demo-hans/challenge"]["slices"]["label"]
    assert by_label["entailment"]["accuracy"] - by_label["non-entailment"]["accuracy"] > 0.3
