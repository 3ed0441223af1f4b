"""The simulatability study end to end (``fastif simulate`` and the ``simulate`` job call this):
test examples → the simulator (trained once, reused) → per test example its explanations from the task
model's influence (stored influence runs reused) → the loss-change curves → the summary, stored once per
(model, settings) and answered from the store afterwards."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from fastif_core.apps.simulate.config import SimulateConfig, result_key
from fastif_core.apps.simulate.explanations import explanation_sets, select_test_examples
from fastif_core.apps.simulate.simulator import Simulator, ensure_simulator
from fastif_core.apps.simulate.steps import losses_after_step, test_loss
from fastif_core.apps.simulate.summary import example_curves, summarize
from fastif_core.config import to_dict
from fastif_core.progress import Progress, ignore
from fastif_core.queries.influence import Runner, influence_query, serial_runner
from fastif_core.queries.sketch import influence_sketch_query
from fastif_core.store import ExampleRow, Store
from fastif_core.workspace.layout import LoadedWorkspace, require_prepared

APP, KIND = "simulation", "simulate"
SIMULATOR_SHARE = 0.2  # of the progress bar, while the simulator is trained (or loaded)


def simulate(
    root: str | Path,
    cfg: SimulateConfig,
    *,
    device: str = "cpu",
    loaded: LoadedWorkspace | None = None,
    runner: Runner = serial_runner,
    progress: Progress | None = None,
    show_progress: bool = False,
    job_id: int | None = None,
    owner: str | None = None,
) -> dict[str, Any]:
    """Run (or read back) the study of ``cfg`` on the workspace's model; the JSON of ``fastif simulate``.
    With ``job_id``/``owner`` the result and the job's ``done`` land in one transaction."""
    cfg.validate()
    manifest = require_prepared(root)
    model_id, key = int(manifest["model_id"]), result_key(cfg)
    store = Store.open(root)
    try:
        found = store.find_app_result(APP, key, model_id=model_id, kind=KIND)
        if found is not None:
            result = found.result
        else:
            tests = select_test_examples(store, model_id, cfg)  # a bad filter fails before any work
            result = _compute(
                root, cfg, tests, store, device, loaded, runner, progress or ignore, show_progress
            )
        info = store.save_app_result(
            APP, cfg, result, model_id=model_id, kind=KIND, job_id=job_id, owner=owner, config_hash=key
        )
    finally:
        store.close()
    return {
        "simulation_id": info.id,
        "model_id": model_id,
        "cached": found is not None,
        "config": info.config,
        **info.result,
    }


def _compute(
    root: str | Path,
    cfg: SimulateConfig,
    tests: list[ExampleRow],
    store: Store,
    device: str,
    loaded: LoadedWorkspace | None,
    runner: Runner,
    report: Progress,
    show_progress: bool,
) -> dict[str, Any]:
    started = time.perf_counter()
    loaded = loaded or LoadedWorkspace.load(root, device)
    report(0.0, "simulator: loading or fine-tuning on the task model's predictions")
    sim = ensure_simulator(
        loaded,
        store,
        epochs=cfg.simulator_epochs,
        show_progress=show_progress,
        progress=lambda f, m: report(SIMULATOR_SHARE * f, f"simulator {m}"),
    )
    t_sim = time.perf_counter() - started
    lrs = cfg.grid()
    examples = []
    for i, ex in enumerate(tests):
        span = (1 - SIMULATOR_SHARE) / len(tests)
        lo = SIMULATOR_SHARE + i * span
        where = f"test example {i + 1}/{len(tests)}"
        examples.append(
            study_example(
                loaded,
                sim,
                ex,
                cfg,
                lrs,
                runner,
                lambda f, m, lo=lo, span=span, at=where: report(lo + span * f, f"{at}: {m}"),
            )
        )
    kinds = list(examples[0]["curves"])
    seconds = {
        "simulator": t_sim,
        "influence": sum(e["seconds"]["influence"] for e in examples),
        "measurement": sum(e["seconds"]["measurement"] for e in examples),
    }
    report(1.0, "storing the study")
    return {
        "learning_rates": lrs,
        "kinds": kinds,
        "examples": examples,
        "summary": summarize(examples, kinds, lrs),
        "influence_config": to_dict(cfg.influence_config(len(loaded.train_ids))),
        "simulator": {
            "model_id": sim.info.id,
            "reused": sim.reused,
            "train_seconds": sim.train_seconds,
            "metrics": {k: v for k, v in sim.info.metrics.items() if k != "loss_curve"},
            "lineage": sim.info.lineage,
        },
        "seconds": {**seconds, "total": time.perf_counter() - started},
    }


def task_target(ex: ExampleRow) -> int:
    """The task model's predicted class of ``ex`` (argmax of its stored probabilities, model label order)."""
    probs = ex.probs or []
    return max(range(len(probs)), key=probs.__getitem__)


def study_example(
    loaded: LoadedWorkspace,
    sim: Simulator,
    ex: ExampleRow,
    cfg: SimulateConfig,
    lrs: list[float],
    runner: Runner,
    report: Progress,
) -> dict[str, Any]:
    """One test example: its explanations (influence on its gold-label loss) and every kind's curve."""
    t0 = time.perf_counter()
    icfg = cfg.influence_config(len(loaded.train_ids))
    if cfg.method == "sketch":
        inf = influence_sketch_query(loaded.root, ex.id, icfg, cfg.sketch, loaded=loaded)
    else:
        inf = influence_query(
            loaded.root,
            ex.id,
            icfg,
            loaded=loaded,
            runner=runner,
            progress=lambda f, m: report(0.5 * f, f"influence: {m}"),
        )
    pos_of = {tid: p for p, tid in enumerate(loaded.train_ids)}
    sets = explanation_sets(
        inf,
        pos_of,
        loaded.train.labels.tolist(),
        loaded.label_names,
        cfg.per_kind,
        seed=f"{cfg.seed}:{ex.id}",
    )
    t1 = time.perf_counter()
    positions = sorted({p for ps in sets.values() for p in ps})
    row = {p: r for r, p in enumerate(positions)}
    batch = loaded.encode_test(ex.to_record())
    batch["labels"] = torch.tensor([task_target(ex)])
    before = float(test_loss(sim.objective, batch))
    losses = losses_after_step(
        sim.objective,
        loaded.train,
        positions,
        torch.tensor(lrs, dtype=torch.float64),
        batch,
        cfg.lr_chunk,
        lambda d, n: report(0.5 + 0.5 * d / n, f"simulator steps {d}/{n}"),
    )
    changes = (losses.double().cpu() - before).tolist()
    return {
        "example_id": ex.id,
        "dataset": ex.dataset,
        "split": ex.split,
        "label": ex.label,
        "predicted": ex.predicted,
        "correct": bool(ex.correct),
        "target": loaded.label_names[task_target(ex)],
        "loss_before": before,
        "influence_run_id": inf["run_id"],
        "influence_cached": inf["cached"],
        "explanations": {k: [loaded.train_ids[p] for p in ps] for k, ps in sets.items()},
        "curves": example_curves(changes, {k: [row[p] for p in ps] for k, ps in sets.items()}),
        "seconds": {"influence": t1 - t0, "measurement": time.perf_counter() - t1},
    }
