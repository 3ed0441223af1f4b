"""``prepare``: the workspace it builds is complete and consistent, and re-runs reuse it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from factories import save_tiny_checkpoint, tiny_prepare_config

from fastif_core.config import TrainConfig
from fastif_core.store import Store
from fastif_core.workspace.layout import LoadedWorkspace, WorkspacePaths, load_features, read_manifest
from fastif_core.workspace.prepare import prepare, split_train_source


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
    feats, ids = load_features(WorkspacePaths.of(tiny_workspace_template, manifest).features)
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


def _weights_digest(ws: Path, model_id: int) -> str:
    """sha256 of the safetensors files of the checkpoint the store registers for ``model_id``."""
    import hashlib

    with Store.open(ws) as store:
        directory = Path(store.get_model(model_id).checkpoint_path)
    files = sorted(directory.glob("*.safetensors"))
    assert files, directory
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


def _param_digest(loaded: LoadedWorkspace) -> str:
    """sha256 of the loaded parameters (independent of where the files are)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(loaded.model.state_dict().items()):
        h.update(name.encode() + t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_prepare_a_then_b_then_a_serves_a_weights(tmp_path: Path):
    """Each model id has its own checkpoint: going back to settings A loads A's weights, not B's."""
    model = save_tiny_checkpoint(tmp_path / "base")
    a = tiny_prepare_config(model, demo_size=40)
    b = dataclasses.replace(a, train_config=dataclasses.replace(a.train_config, lr=2e-3))
    ws = tmp_path / "ws"
    first = prepare(ws, a, show_progress=False)
    params_a, files_a = _param_digest(LoadedWorkspace.load(ws)), _weights_digest(ws, first["model_id"])
    second = prepare(ws, b, show_progress=False)
    assert second["model_id"] != first["model_id"]
    assert _param_digest(LoadedWorkspace.load(ws)) != params_a
    again = prepare(ws, a, show_progress=False)
    assert again["model_id"] == first["model_id"] and again["train_seconds"] == 0.0  # reused, not retrained
    loaded = LoadedWorkspace.load(ws)
    assert _param_digest(loaded) == params_a and _weights_digest(ws, first["model_id"]) == files_a
    assert _weights_digest(ws, second["model_id"]) != files_a
    with Store.open(ws) as store:  # browse (no model given) shows the active model's predictions
        rows = store.query_examples(limit=None)
        preds = store.get_predictions(first["model_id"])
        assert rows and all(r.predicted == preds[r.id].predicted for r in rows)
        assert store.get_model(first["model_id"]).lineage["method"] == "fine-tune"


def _write_tsv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path.write_text("".join(f"{p}\t{h}\t{y}\n" for p, h, y in rows))
    return path


PAIRS_TSV = [
    (f"The {n} near the {m} is sleeping number {i}.", f"The {n} is sleeping {i}.", y)
    for i, (n, m, y) in enumerate(
        [("cat", "dog", "entailment"), ("man", "car", "neutral"), ("girl", "tree", "contradiction")] * 8
    )
]


def test_fixed_labels_in_the_training_file_are_not_reused(tmp_path: Path):
    model = save_tiny_checkpoint(tmp_path / "base")
    train = _write_tsv(tmp_path / "train.tsv", PAIRS_TSV)
    cfg = tiny_prepare_config(model, train=str(train))
    first = prepare(tmp_path / "ws", cfg, show_progress=False)
    fixed = list(PAIRS_TSV)
    fixed[0] = (fixed[0][0], fixed[0][1], "contradiction")
    _write_tsv(train, fixed)
    second = prepare(tmp_path / "ws", cfg, show_progress=False)
    assert second["reused"] is False and second["model_id"] != first["model_id"]
    with Store.open(tmp_path / "ws") as store:
        assert store.get_example("mnli:train:0").label == "contradiction"
    assert prepare(tmp_path / "ws", cfg, show_progress=False)["reused"] is True


def test_examples_of_dropped_sources_leave_browse(tmp_path: Path):
    model = save_tiny_checkpoint(tmp_path / "base")
    extra = _write_tsv(tmp_path / "extra_eval.tsv", PAIRS_TSV[:6])
    cfg = tiny_prepare_config(model, demo_size=40)
    prepare(tmp_path / "ws", dataclasses.replace(cfg, evals=(str(extra),)), show_progress=False)
    with Store.open(tmp_path / "ws") as store:
        assert store.count_examples(split="extra_eval") == 6
    prepare(tmp_path / "ws", cfg, show_progress=False)
    with Store.open(tmp_path / "ws") as store:
        assert store.count_examples(split="extra_eval") == 0
        assert "extra_eval" not in store.distinct_values("split")
        assert store.get_example("mnli:extra_eval:0") is not None  # kept for results that refer to it


def test_max_eval_is_stratified_by_slice_and_seeded(tmp_path: Path):
    from fastif_core.data import demo_split
    from fastif_core.data.sampling import stratified_sample, stratum

    challenge = demo_split("challenge", 0, 4)  # 30 subcases x 4
    picked = stratified_sample(challenge, 60, seed=3)
    assert len(picked) == 60 and picked == stratified_sample(challenge, 60, seed=3)
    assert picked != stratified_sample(challenge, 60, seed=4)
    per = {}
    for ex in picked:
        per[stratum(ex)] = per.get(stratum(ex), 0) + 1
    assert sorted(set(per.values())) == [2] and len(per) == 30  # every subcase keeps its share
    ids = [e.id for e in challenge]
    assert [ids.index(e.id) for e in picked] == sorted(ids.index(e.id) for e in picked)  # file order kept
    model = save_tiny_checkpoint(tmp_path / "base")
    manifest = prepare(
        tmp_path / "ws", tiny_prepare_config(model, demo_size=40, max_eval=30), show_progress=False
    )
    assert {name: rep["n"] for name, rep in manifest["accuracy"].items()}["demo-hans/challenge"] == 30
    assert all(rep["n"] <= 30 for rep in manifest["accuracy"].values())


KILLED_PREPARE = """
import dataclasses, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from factories import tiny_prepare_config
from fastif_core.workspace.prepare import prepare

cfg = tiny_prepare_config(Path({model!r}), demo_size=40)
cfg = dataclasses.replace(cfg, train_config=dataclasses.replace(cfg.train_config, seed=1, epochs=200))

def progress(fraction, message):
    if message.startswith("fine-tuning"):
        print("TRAINING", flush=True)

prepare({ws!r}, cfg, progress=progress, show_progress=False)
"""


def test_prepare_killed_mid_training_leaves_the_old_consistent_state(tmp_path: Path):
    """SIGKILL a re-prepare (other seed: other training order) while it fine-tunes: the workspace still
    answers with the old model, index and training order; the next prepare completes."""
    import os
    import signal
    import subprocess
    import sys

    model = save_tiny_checkpoint(tmp_path / "base")
    ws = tmp_path / "ws"
    old = prepare(ws, tiny_prepare_config(model, demo_size=40), show_progress=False)
    before = LoadedWorkspace.load(ws)
    script = KILLED_PREPARE.format(
        tests=str(Path(__file__).resolve().parents[1]), model=str(model), ws=str(ws)
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    try:
        assert proc.stdout.readline().strip() == "TRAINING"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert read_manifest(ws) == json.loads(json.dumps(old))
    after = LoadedWorkspace.load(ws)
    assert after.train_ids == before.train_ids and after.model_id == old["model_id"]
    for pos, ex_id in enumerate(after.train_ids):  # FAISS position p is still the example train_ids[p]
        row = after.feature_rows[ex_id]
        assert torch.equal(after.features[row], before.features[before.feature_rows[ex_id]])
        positions, distances = after.nearest(ex_id, 1)
        assert distances[0] == pytest.approx(0.0, abs=1e-4)
        assert positions[0] == pos or torch.allclose(
            after.features[after.feature_rows[after.train_ids[positions[0]]]], after.features[row]
        )
    with Store.open(ws) as store:
        assert store.train_ids() == before.train_ids  # the browse order too
    new_cfg = tiny_prepare_config(model, demo_size=40)
    new_cfg = dataclasses.replace(new_cfg, train_config=dataclasses.replace(new_cfg.train_config, seed=1))
    new = prepare(ws, new_cfg, show_progress=False)
    assert new["model_id"] != old["model_id"] and LoadedWorkspace.load(ws).train_ids != before.train_ids
    assert not any((ws / "staging").iterdir())  # the killed run's staging area was swept


CONCURRENT_PREPARE = """
import dataclasses, json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from factories import tiny_prepare_config
from fastif_core.workspace.prepare import prepare

cfg = tiny_prepare_config(Path({model!r}), demo_size=40)
seen = set()

def progress(fraction, message):
    for word, tag in (("fine-tuning", "TRAINING"), ("waiting", "WAITING")):
        if message.startswith(word) and tag not in seen:
            seen.add(tag)
            print(tag, flush=True)
            if tag == "TRAINING":
                sys.stdin.readline()  # hold the lock mid-training until the test says go

m = prepare({ws!r}, cfg, progress=progress, show_progress=False)
print(json.dumps({{"reused": m["reused"], "model_id": m["model_id"], "build": m["build"]}}), flush=True)
"""


def test_concurrent_prepares_of_one_workspace_wait_for_each_other(tmp_path: Path):
    """A second prepare started while the first one trains waits for its lock, then reuses its result
    (it used to train too and fail on renaming its checkpoint over the first one's)."""
    import os
    import subprocess
    import sys

    model = save_tiny_checkpoint(tmp_path / "base")
    ws = tmp_path / "ws"
    script = CONCURRENT_PREPARE.format(
        tests=str(Path(__file__).resolve().parents[1]), model=str(model), ws=str(ws)
    )

    def run() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "TQDM_DISABLE": "1"},
        )

    first = run()
    try:
        assert first.stdout.readline().strip() == "TRAINING"  # the first one holds the lock, mid-training
        second = run()
        assert second.stdout.readline().strip() == "WAITING"
        out_first = first.communicate("go\n", timeout=300)[0]
        out_second = second.communicate("", timeout=300)[0]
    finally:
        for proc in (first, locals().get("second")):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert first.returncode == 0 and second.returncode == 0, (out_first, out_second)
    assert "TRAINING" not in out_second  # the second one trained nothing
    a, b = json.loads(out_first.splitlines()[-1]), json.loads(out_second.splitlines()[-1])
    assert (a["reused"], b["reused"]) == (False, True) and a["model_id"] == b["model_id"]
    assert a["build"] == b["build"] == read_manifest(ws)["build"]
    assert [d.name for d in (ws / "models").iterdir()] == [str(a["model_id"])]


def test_fit_subset_fine_tunes_on_n_and_keeps_every_training_example(tmp_path: Path):
    """``fit_subset=30`` of 108 training rows (a generated file): the model saw only the first 30 positions
    (2 steps of 16, not 7), while the store, the features, the FAISS index and a full influence query hold
    all 108; the same settings again are a no-op, another subset is another model."""
    from fastif_core.benchmarks.retrain import fine_tuned, fitted_positions, train_setup
    from fastif_core.config import InfluenceConfig, STestConfig
    from fastif_core.data.sampling import content_hash
    from fastif_core.data.training_file import write_training_file
    from fastif_core.modeling.classifier import TRAIN_META
    from fastif_core.queries.influence import influence_query

    train = tmp_path / "train.tsv"
    write_training_file(train, 120, seed=0)
    model = save_tiny_checkpoint(tmp_path / "base")
    cfg = tiny_prepare_config(model, train=str(train), holdout=0.1, fit_subset=30)
    manifest = prepare(tmp_path / "ws", cfg, show_progress=False)
    assert (manifest["num_train"], manifest["num_fit"], manifest["fit_subset"]) == (108, 30, 30)
    assert manifest["prepare_config"]["fit_subset"] == 30
    loaded = LoadedWorkspace.load(tmp_path / "ws")
    assert len(loaded.train_ids) == 108 and len(loaded.train) == 108 and loaded.index.ntotal == 108
    with Store.open(tmp_path / "ws") as store:
        assert store.count_examples(split="train") == 108
        assert len(store.get_predictions(manifest["model_id"])) == 120  # 108 training + 12 held out
        fitted = [r.to_record() for r in store.get_examples(loaded.train_ids[:30])]
        lineage = store.get_model(manifest["model_id"]).lineage
        checkpoint = Path(store.get_model(manifest["model_id"]).checkpoint_path)
        heldout = store.query_examples(split="heldout", limit=1)[0].id
    assert lineage["num_train"] == 30 and lineage["train_data_hash"] == content_hash(fitted)
    assert json.loads((checkpoint / TRAIN_META).read_text())["metrics"]["steps"] == 2  # ceil(30 / 16)
    icfg = InfluenceConfig(k=None, top=0, s_test=STestConfig.gauss_newton_cg(batch_size=16, depth=5))
    result = influence_query(tmp_path / "ws", heldout, icfg, loaded=loaded)
    scored = {row["train_id"] for row in result["helpful"] + result["harmful"]}
    assert result["num_candidates"] == 108 and scored == set(loaded.train_ids)
    # the retraining checks fine-tune on the fitted positions: their baseline is the workspace's model
    tcfg, base = train_setup(loaded)
    assert fitted_positions(loaded) == range(30)
    again = fine_tuned(loaded, fitted_positions(loaded), tcfg, base)
    probe = loaded.train.collate(list(range(30, 38)))  # examples the model never saw
    torch.testing.assert_close(
        again.batch_loss(again.params, probe), loaded.objective.batch_loss(loaded.objective.params, probe)
    )
    assert prepare(tmp_path / "ws", cfg, show_progress=False)["reused"] is True
    other = prepare(tmp_path / "ws", dataclasses.replace(cfg, fit_subset=60), show_progress=False)
    assert other["reused"] is False and other["model_id"] != manifest["model_id"] and other["num_fit"] == 60


def test_fit_subset_larger_than_the_training_set_is_refused_before_anything_is_written(tmp_path: Path):
    from fastif_core.errors import ConfigError

    model = save_tiny_checkpoint(tmp_path / "base")
    with pytest.raises(
        ConfigError, match=r"fit_subset=61 is invalid: allowed 1 to 60 \(the training examples"
    ):
        prepare(tmp_path / "ws", tiny_prepare_config(model, fit_subset=61), show_progress=False)
    assert not (tmp_path / "ws").exists()
    with pytest.raises(ConfigError, match="fit_subset=0 is invalid: allowed an integer >= 1"):
        prepare(tmp_path / "ws", tiny_prepare_config(model, fit_subset=0), show_progress=False)


PREPARE_PHASES = (
    "load",
    "load_model",
    "encode_fit",
    "fine_tune",
    "encode",
    "featurise",
    "predictions",
    "faiss_build",
    "save_features",
    "eval",
    "neighbours",
    "import",
)


def test_manifest_measures_every_phase_and_the_sizes_on_disk(tmp_path: Path):
    model = save_tiny_checkpoint(tmp_path / "base")
    cfg = tiny_prepare_config(model, demo_size=40)
    manifest = prepare(tmp_path / "ws", cfg, show_progress=False)
    assert json.loads(json.dumps(manifest)) == read_manifest(tmp_path / "ws")  # returned = the file
    assert set(manifest["phases"]) == set(PREPARE_PHASES)
    for name, phase in manifest["phases"].items():
        assert set(phase) == {"seconds", "peak_rss_mb", "peak_growth_mb"}, name
        assert phase["seconds"] >= 0 and phase["peak_rss_mb"] > 0 and phase["peak_growth_mb"] >= 0
        assert phase["peak_growth_mb"] <= phase["peak_rss_mb"]
    paths = WorkspacePaths.of(tmp_path / "ws", manifest)
    disk = manifest["disk_mb"]
    assert disk["index"] == pytest.approx(paths.index.stat().st_size / 2**20)
    assert disk["features"] == pytest.approx(paths.features.stat().st_size / 2**20)
    assert disk["database"] >= paths.db.stat().st_size / 2**20 > 0
    assert disk["model"] > 0 and disk["sketches"] is None  # no sketch index: prepare() builds none
    text = (tmp_path / "ws" / "workspace.json").read_text()
    again = prepare(tmp_path / "ws", cfg, show_progress=False)  # the measurements are not settings
    assert again["reused"] is True and (tmp_path / "ws" / "workspace.json").read_text() == text
    assert again["phases"] == manifest["phases"]  # those of the prepare that built it
    reused_model = prepare(tmp_path / "ws", dataclasses.replace(cfg, neighbors=3), show_progress=False)
    assert "fine_tune" not in reused_model["phases"] and "load_model" in reused_model["phases"]


def test_neighbour_lists_through_another_index_are_recorded_and_match_exact_ones(
    tiny_workspace_template: Path, tmp_path: Path
):
    """``neighbors_index="IVF1,Flat"`` (one cell, probed: exact results through the IVF path) stores the
    neighbour lists of the default (exact) prepare and says in the manifest which index listed them; the
    default prepare records its own index as exact."""
    model = save_tiny_checkpoint(tmp_path / "base")
    other = prepare(
        tmp_path / "ws", tiny_prepare_config(model, neighbors_index="IVF1,Flat"), show_progress=False
    )
    assert other["neighbors_index"] == {"index": "IVF1,Flat", "nprobe": 32, "exact": False}
    assert read_manifest(tiny_workspace_template)["neighbors_index"] == {
        "index": "Flat",
        "nprobe": 16,
        "exact": True,
    }
    with Store.open(tmp_path / "ws") as a, Store.open(tiny_workspace_template) as b:
        ids = [r.id for r in b.query_examples(limit=None)]
        ma, mb = (
            read_manifest(tmp_path / "ws")["model_id"],
            read_manifest(tiny_workspace_template)["model_id"],
        )
        for example_id in ids[::7]:  # as sets: two index types may order float32 ties differently
            assert {n.train_id for n in a.get_neighbors(ma, example_id)} == {
                n.train_id for n in b.get_neighbors(mb, example_id)
            }
