"""Simulatability (``fastif_core.apps.simulate``): the measurement's shortcut against the naive
step-and-restore loop on a tiny float64 BERT, the simulator trained on the task model's predictions, a
small study end to end through a real worker (its curves recomputed by the naive loop), the Explain
page on the stored study, the migration from revision 0003, and invalid settings."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from factories import make_tiny_bert, make_tiny_examples
from test_bad_input import assert_one_line, run_cli, workspace_digest

from fastif_core import jobs
from fastif_core.apps.simulate import steps
from fastif_core.apps.simulate.config import SimulateConfig
from fastif_core.apps.simulate.simulator import (
    ensure_simulator,
    predicted_labels,
    simulator_objective,
    training_set,
)
from fastif_core.cli import main
from fastif_core.errors import JobError
from fastif_core.modeling.classifier import freeze_layers, predict_proba
from fastif_core.store import Store
from fastif_core.worker.loop import run_worker
from fastif_core.workspace.layout import LoadedWorkspace

STUDY = [
    "--test-examples",
    "2",
    "--learning-rates",
    "3",
    "--lr-min",
    "1e-3",
    "--lr-max",
    "1e-1",
    "--per-kind",
    "2",
    "--k",
    "12",
    "--depth",
    "3",
    "--seed",
    "1",
    "--device",
    "cpu",
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: tiny models on a shared 2-core machine are many times faster without the
    threads waiting on each other (the worker still sets its own share while it runs)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def tiny_simulator(seed: int = 0):
    """A float64 tiny BERT (embeddings frozen) as the simulator, and real sentence pairs."""
    model = make_tiny_bert(seed, dtype=torch.float64)
    freeze_layers(model, 0, embeddings=True)
    return simulator_objective(model), make_tiny_examples(6, seed=seed)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_identical(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert now.keys() == before.keys()
    assert all(torch.equal(now[k], before[k]) for k in before), [
        k for k in before if not torch.equal(now[k], before[k])
    ]


def test_shortcut_equals_the_naive_loop_which_restores_the_simulator_bit_identically():
    objective, train = tiny_simulator()
    test = train.collate([0])
    test["labels"] = torch.tensor([2])
    lrs = torch.logspace(-3, 0, 3, dtype=torch.float64)
    positions = [1, 3, 1]  # a repeat: the second step on example 1 must see the same weights
    before = snapshot(objective.model)
    naive = steps.losses_after_step_reference(objective, train, positions, lrs, test)
    assert_bit_identical(objective.model, before)
    assert torch.equal(naive[0], naive[2])  # no drift from one trial to the next
    fast = steps.losses_after_step(objective, train, positions, lrs, test, chunk=3)
    assert_bit_identical(objective.model, before)  # the shortcut never writes the weights
    torch.testing.assert_close(fast, naive, rtol=1e-10, atol=1e-12)
    loss0 = steps.test_loss(objective, test)
    assert (naive - loss0).abs().min() > 1e-9  # every step really changed the loss
    zero = steps.losses_after_step(objective, train, [3], torch.zeros(1, dtype=torch.float64), test)
    torch.testing.assert_close(zero[0, 0], loss0, rtol=1e-12, atol=0)


def test_shortcut_step_is_the_gradient_step_of_an_independent_model_copy():
    """Ground truth from a model copy updated by hand: θ − lr·∇ℓ(x_e, y_e), then ℓ(x_test, ŷ)."""
    import copy

    objective, train = tiny_simulator(seed=1)
    test = train.collate([2])
    test["labels"] = torch.tensor([1])
    twin = copy.deepcopy(objective.model)
    batch = train.collate([5])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    loss = torch.nn.functional.cross_entropy(twin(**inputs).logits, batch["labels"])
    trainable = [p for p in twin.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, trainable)
    with torch.no_grad():
        for p, g in zip(trainable, grads, strict=True):
            p -= 0.05 * g
        expected = torch.nn.functional.cross_entropy(
            twin(**{k: v for k, v in test.items() if k != "labels"}).logits, test["labels"]
        )
    got = steps.losses_after_step(objective, train, [5], torch.tensor([0.05], dtype=torch.float64), test)
    torch.testing.assert_close(got[0, 0], expected, rtol=1e-10, atol=1e-12)


def test_simulator_is_trained_on_the_task_models_predictions_once(tiny_workspace: Path):
    loaded = LoadedWorkspace.load(tiny_workspace, "cpu", search=False)
    with Store.open(tiny_workspace) as store:
        labels = predicted_labels(store, loaded.model_id, loaded.train_ids, len(loaded.label_names))
        recomputed = predict_proba(loaded.model, loaded.train).argmax(-1)  # the task model, run again
        assert torch.equal(labels, recomputed)
        assert not torch.equal(labels, loaded.train.labels)  # predictions, not the gold labels
        simulated = training_set(loaded.train, labels)
        assert torch.equal(simulated.labels, recomputed) and simulated.input_ids == loaded.train.input_ids
        first = ensure_simulator(loaded, store)
        again = ensure_simulator(loaded, store)
        models = store.list_models()
    assert not first.reused and again.reused and again.info.id == first.info.id
    lin = first.info.lineage
    assert lin["kind"] == "simulator" and lin["parent_model_id"] == loaded.model_id
    assert lin["labels_hash"] == hashlib.sha256(json.dumps(recomputed.tolist()).encode()).hexdigest()[:16]
    assert [m.id for m in models if m.active] == [loaded.model_id]  # the simulator is never served
    saved = json.loads((tiny_workspace / "models" / str(first.info.id) / "lineage.json").read_text())
    assert saved["model_id"] == first.info.id and saved["parent_model_id"] == loaded.model_id
    assert_bit_identical(again.model, snapshot(first.model))  # reloaded from its checkpoint


@pytest.fixture(scope="module")
def studied(tmp_path_factory, tiny_workspace_template) -> dict:
    """A small study queued with `fastif simulate --queue` and run by a real worker, on a private copy of
    the tiny workspace."""
    ws = Path(shutil.copytree(tiny_workspace_template, tmp_path_factory.mktemp("sim") / "ws"))
    assert main(["simulate", "-w", str(ws), *STUDY, "--queue"]) == 0
    assert main(["simulate", "-w", str(ws), *STUDY, "--queue"]) == 0  # the same settings: one job
    with Store.open(ws) as store:
        queued = store.list_jobs(kind="simulate")
        assert len(queued) == 1
        assert run_worker(ws, "cpu:1", once=True, poll=0.1) == 1
        job = store.get_job(queued[0].id)
        assert job.status == "done", job.error
        sim = store.get_app_result("simulation", job.result["simulation_id"])
    return {"ws": ws, "job": job, "sim": sim}


def test_study_through_the_worker_stores_curves_that_the_naive_loop_reproduces(studied):
    ws, sim = studied["ws"], studied["sim"]
    result, lrs = sim.result, sim.result["learning_rates"]
    assert lrs == pytest.approx([1e-3, 1e-2, 1e-1])
    assert sorted(e["correct"] for e in result["examples"]) == [False, True]
    assert result["summary"]["correct"]["n"] == result["summary"]["incorrect"]["n"] == 1
    with Store.open(ws) as store:
        loaded = LoadedWorkspace.load(ws, "cpu", search=False)
        simulator = ensure_simulator(loaded, store)
        assert simulator.reused and simulator.info.id == result["simulator"]["model_id"]
        pos = {t: p for p, t in enumerate(loaded.train_ids)}
        for ex in result["examples"]:
            run = store.get_influence_run(ex["influence_run_id"])  # the explanations are the stored ranking
            assert ex["explanations"]["helpful"] == [s.train_id for s in run.helpful(2)]
            assert ex["explanations"]["harmful"] == [s.train_id for s in run.harmful(2)]
            assert len(ex["explanations"]["random"]) == sum(
                len(ex["explanations"][f"random:{n}"]) for n in loaded.label_names
            )
            row = store.get_example(ex["example_id"], loaded.model_id)
            batch = loaded.encode_test(row.to_record())
            batch["labels"] = torch.tensor([max(range(len(row.probs)), key=row.probs.__getitem__)])
            # the loss before, from the simulator's logits by hand (not the stored loss_before, whose error
            # would cancel out of the change); float32 recomputed in this process: to 1e-5
            with simulator.objective.evaluating(), torch.no_grad():
                logits = simulator.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            before = float(torch.nn.functional.cross_entropy(logits.double(), batch["labels"]))
            assert ex["loss_before"] == pytest.approx(before, abs=1e-5)
            kinds = [k for k, c in ex["curves"].items() if c is not None]
            assert {"helpful", "harmful", "random"} <= set(kinds)
            for kind in kinds:  # every kind's curve, helpful and harmful included, by the naive loop
                chosen = [pos[t] for t in ex["explanations"][kind]]
                naive = steps.losses_after_step_reference(
                    simulator.objective, loaded.train, chosen, torch.tensor(lrs), batch
                )
                change = naive.double() - before
                got = ex["curves"][kind]
                assert got["n"] == len(chosen), kind
                assert got["mean"] == pytest.approx(change.mean(0).tolist(), abs=1e-5), kind
                assert got["min"] == pytest.approx(change.min(0).values.tolist(), abs=1e-5), kind
                assert got["max"] == pytest.approx(change.max(0).values.tolist(), abs=1e-5), kind


LRS = [0.1, 1.0, 10.0]


def _curve(mean: list[float]) -> dict:
    return {"mean": mean, "min": [m - 1 for m in mean], "max": [m + 1 for m in mean], "n": 2}


def test_curves_and_summaries_on_hand_made_curves():
    """Ground truth worked out by hand: two correct test examples (one without a harmful curve) and one
    incorrect one; every group's band, best learning rate, grid mean and the finding."""
    from fastif_core.apps.simulate.summary import curve, example_curves, finding, kind_summary, summarize

    assert curve([]) is None
    assert curve([[1.0, 2.0], [3.0, 0.0]]) == {
        "mean": [2.0, 1.0],
        "min": [1.0, 0.0],
        "max": [3.0, 2.0],
        "n": 2,
    }
    changes = [[1.0, 2.0], [3.0, 0.0], [5.0, -4.0]]
    assert example_curves(changes, {"a": [2], "b": [0, 2], "c": []}) == {
        "a": {"mean": [5.0, -4.0], "min": [5.0, -4.0], "max": [5.0, -4.0], "n": 1},
        "b": {"mean": [3.0, -1.0], "min": [1.0, -4.0], "max": [5.0, 2.0], "n": 2},
        "c": None,
    }
    a = {
        "correct": True,
        "loss_before": 1.0,
        "curves": {
            "helpful": _curve([-1, -4, 2]),
            "random": _curve([0, -1, 1]),
            "harmful": _curve([1, 0.5, 2]),
        },
    }
    b = {
        "correct": True,
        "loss_before": 2.0,
        "curves": {"helpful": _curve([-3, -1, 0]), "random": _curve([0.5, 1, 1]), "harmful": None},
    }
    c = {
        "correct": False,
        "loss_before": 0.5,
        "curves": {
            "helpful": _curve([0, 0, 0]),
            "random": _curve([-1, -5, -1]),
            "harmful": _curve([-2, -4, -3]),
        },
    }
    # the hand-picked means are exact in binary (approx compares the lists nested in a dict exactly); the
    # thirds are top-level values, compared by approx
    helpful = kind_summary([a["curves"]["helpful"], b["curves"]["helpful"]], LRS)
    assert helpful == pytest.approx(
        {
            "mean": [-2, -2.5, 1],
            "min": [-3, -4, 0],
            "max": [-1, -1, 2],
            "n": 2,
            "best_lr": 1.0,
            "best_change": -2.5,
            "grid_mean_change": -3.5 / 3,
        }
    )
    assert kind_summary([], LRS) is None
    out = summarize([a, b, c], ["helpful", "random", "harmful"], LRS)
    assert (out["correct"]["n"], out["incorrect"]["n"], out["all"]["n"]) == (2, 1, 3)
    assert out["correct"]["loss_before"] == pytest.approx(1.5) and out["all"]["loss_before"] == pytest.approx(
        3.5 / 3
    )
    correct, incorrect = out["correct"]["kinds"], out["incorrect"]["kinds"]
    assert correct["helpful"] == helpful
    assert correct["random"] == pytest.approx(
        {
            "mean": [0.25, 0, 1],
            "min": [0, -1, 1],
            "max": [0.5, 1, 1],
            "n": 2,
            "best_lr": 1.0,
            "best_change": 0.0,
            "grid_mean_change": 1.25 / 3,
        }
    )
    assert correct["harmful"] == pytest.approx(
        {
            "mean": [1, 0.5, 2],
            "min": [1, 0.5, 2],
            "max": [1, 0.5, 2],
            "n": 1,
            "best_lr": 1.0,
            "best_change": 0.5,
            "grid_mean_change": 3.5 / 3,
        }
    )  # b has no harmful curve
    assert incorrect["harmful"]["best_change"] == -4 and incorrect["harmful"]["grid_mean_change"] == -3
    assert incorrect["random"]["best_change"] == -5 and incorrect["random"]["best_lr"] == 1.0
    assert out["all"]["kinds"]["helpful"]["mean"] == pytest.approx([-4 / 3, -5 / 3, 2 / 3])
    # correct: helpful -2.5 < random 0 at the best lr, -3.5/3 < 1.25/3 over the grid; incorrect: harmful
    # -4 is not below random's -5 at the best lr, but -3 < -7/3 over the grid
    assert (
        out["finding"]
        == finding(out)
        == {
            "correct_helpful_beats_random": {"best_lr": True, "grid": True},
            "incorrect_harmful_beats_random": {"best_lr": False, "grid": True},
        }
    )
    only_correct = summarize([a, b], ["helpful", "random", "harmful"], LRS)
    assert only_correct["incorrect"] == {
        "n": 0,
        "loss_before": None,
        "kinds": {"helpful": None, "random": None, "harmful": None},
    }
    assert only_correct["finding"]["incorrect_harmful_beats_random"] == {"best_lr": None, "grid": None}
    without_random = summarize([a, c], ["helpful", "harmful"], LRS)
    assert without_random["finding"]["correct_helpful_beats_random"] == {"best_lr": None, "grid": None}


def test_cli_answers_a_stored_study_from_the_store(studied, capsys):
    ws, sim = studied["ws"], studied["sim"]
    with Store.open(ws) as store:
        runs, models = len(store.list_influence_runs()), len(store.list_models())
    code, out, err = run_cli(capsys, ["simulate", "-w", ws, *STUDY, "--json"])
    assert code == 0, err
    answer = json.loads(out)
    assert (
        answer["cached"] and answer["simulation_id"] == sim.id and answer["summary"] == sim.result["summary"]
    )
    with Store.open(ws) as store:
        assert (len(store.list_influence_runs()), len(store.list_models())) == (runs, models)


def test_explain_page_draws_the_stored_study(studied, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FASTIF_WORKSPACE", str(studied["ws"]))
    monkeypatch.setenv("FASTIF_AUTOSTART_WORKER", "0")
    st.cache_data.clear()
    at = AppTest.from_file(
        str(Path(__file__).resolve().parents[2] / "app" / "dashboard.py"), default_timeout=60
    )
    at.run()
    at.switch_page("views/explain.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.get("vega_lite_chart")) == 3  # correct, incorrect, the chosen test example
    table = at.dataframe[0].value
    summary = studied["sim"].result["summary"]
    helpful = table[(table["predictions"] == "correct") & (table["kind"] == "helpful")].iloc[0]
    assert helpful["Δ loss at best lr"] == pytest.approx(
        summary["correct"]["kinds"]["helpful"]["best_change"]
    )
    assert at.selectbox(key="simulation").value == studied["sim"].id


def test_migration_from_revision_0003_adds_the_simulations_table(tmp_path):
    from sqlalchemy import text

    from fastif_core.store import engine as eng

    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = eng.make_engine(url)
    eng.upgrade(old, "0003")
    with old.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO models (id, name, checkpoint_path, train_config, config_hash, metrics, "
                "label_names, created_at, lineage, active) VALUES (1, 'm', '', '{}', 'c1', '{}', '[]', "
                "'2026-12-01 00:00:00', '{}', 1)"
            )
        )
    old.dispose()
    with Store.open(url=url) as st:
        assert st.revision() == "0007" and st.get_model(1).active
        cfg = SimulateConfig()
        first = st.save_app_result("simulation", cfg, {"examples": []}, model_id=1, kind="simulate")
        again = st.save_app_result("simulation", cfg, {"examples": [1]}, model_id=1, kind="simulate")
        assert again.id == first.id and again.result == {"examples": []}  # unique per (model, kind, settings)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--lr-min", "1e-2", "--lr-max", "1e-3"], ["lr_max=0.001 is invalid", "lr_min"]),
        (["--test-examples", "1"], ["test_examples=1 is invalid", ">= 2"]),
        (["--learning-rates", "0"], ["learning_rates=0 is invalid"]),
        (["--per-kind", "0"], ["per_kind=0 is invalid"]),
        (["--test-examples", "400"], ["test_examples=400 is invalid", "the filter matches"]),
        (["--dataset", "no-such-dataset"], ["test_examples=20 is invalid", "matches 0"]),
        (["--k", "0"], ["k=0 is invalid"]),
        (["--learning-rates", "many"], ["--learning-rates", "invalid int value"]),
    ],
)
def test_invalid_settings_are_one_line_and_change_nothing(tiny_workspace_template, capsys, args, needles):
    before = workspace_digest(tiny_workspace_template)
    for extra in ([], ["--queue"]):
        code, _, err = run_cli(capsys, ["simulate", "-w", tiny_workspace_template, *args, *extra])
        assert_one_line(code, err, *needles)
    assert workspace_digest(tiny_workspace_template) == before


def test_invalid_job_parameters_are_refused_when_queued(tiny_workspace):
    with (
        Store.open(tiny_workspace) as store,
        pytest.raises(JobError, match=r"simulate job: lr_min=-1 is invalid"),
    ):
        jobs.enqueue(store, "simulate", {"config": {"lr_min": -1}})
