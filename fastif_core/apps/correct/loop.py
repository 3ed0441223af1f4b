"""Error correction by influence (paper Sec. 6.3, the original code's ``experiments/hans.py``): the loop.

For I iterations: draw A anchors from the target slice's anchor pool; influence of the k candidates
nearest the anchors' mean feature on the anchors' *mean* loss (one test gradient of the A-row batch,
one s_test); one SGD step ``θ ← θ - lr·∇(mean loss of the m chosen examples)`` on the trainable
parameters; evaluate every slice's evaluation part. The model carries over to the next iteration.
Methods choose the step's examples with the same budget and the same anchors:

- ``helpful``: the m most negative influences (up-weighting them lowers the anchors' loss),
- ``harmful``: the m most positive, ``random``: m uniformly drawn pool examples,
- ``anchors``: the anchors themselves (fine-tuning on the test examples, the paper's "z-test" baseline).

Everything here is tensors and models in, numbers out; the engine does the math
(:func:`~fastif_core.engine.influence.test_gradient`, :func:`~fastif_core.engine.solvers.solve`,
:func:`~fastif_core.engine.scoring.score_many`, :func:`~fastif_core.modeling.classifier.predict_proba`). The job, the store
and the files are in :mod:`fastif_core.apps.correct.job`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fastif_core.apps.correct.config import CorrectConfig
from fastif_core.config import InfluenceConfig
from fastif_core.engine.examples import Batch, Examples
from fastif_core.engine.influence import test_gradient
from fastif_core.engine.objective import Objective
from fastif_core.engine.scoring import score_many
from fastif_core.engine.solvers import solve
from fastif_core.modeling import classifier as M
from fastif_core.progress import Progress

ObjectiveFactory = Callable[[Any], Objective]  # model -> its influence objective


def sgd_step(objective: Objective, batch: Batch, lr: float, *, include_l2: bool = False) -> Tensor:
    """One plain SGD step on the trainable parameters, in place: ``θ ← θ - lr·∇ mean_i ℓ_i`` over the
    batch (eval mode: no dropout); returns the flat gradient ``(P,)`` it used."""
    with objective.evaluating():
        grad = objective.grad(batch, include_l2=include_l2)
    params = objective.params  # detached views of the model's own tensors
    with torch.no_grad():
        for name, g in objective.unflatten(grad).items():
            params[name].sub_(lr * g)
    return grad


def influence_config(cfg: CorrectConfig) -> InfluenceConfig:
    """The InfluenceConfig equivalent of the run's settings (which gradients carry the L2 term)."""
    return InfluenceConfig(
        s_test=cfg.s_test, k=cfg.k, score_batch_size=cfg.score_batch_size, gradient_l2=cfg.gradient_l2
    ).validate()


def anchor_influence(
    objective: Objective,
    anchor_batch: Batch,
    train: Examples,
    pool: Examples,
    candidates: list[int],
    cfg: CorrectConfig,
) -> tuple[Tensor, dict[str, Any]]:
    """Influence ``(k,)`` of ``pool[candidates]`` on the mean loss of the anchor batch: one s_test
    ``(C + μI)⁻¹ ∇ mean_a ℓ(z_a)`` over the training curvature, scored by :func:`score_many`."""
    icfg = influence_config(cfg)
    v = test_gradient(objective, anchor_batch, include_l2=icfg.test_l2)  # (P,) gradient of the batch mean
    est = solve(objective, v, train, cfg.s_test)
    values = score_many(
        objective, est.s_test.unsqueeze(0), pool, candidates, cfg.score_batch_size, include_l2=icfg.train_l2
    )[0]
    return values, est.stats()


def pick(method: str, values: Tensor, candidates: list[int], top: int) -> list[int]:
    """The ``top`` candidates of ``helpful`` (most negative influence first) or ``harmful`` (most positive)."""
    order = torch.argsort(values, descending=method == "harmful", stable=True)[:top]
    return [candidates[i] for i in order.tolist()]


def evaluate(model: Any, parts: dict[str, Any], batch_size: int = 64, device: str = "cpu") -> dict[str, dict]:
    """Mean loss and accuracy of ``model`` on each encoded part; label index C (one past the last class) is
    2-way *non-entailment* on a 3-way model: probability ``p_1 + ... + p_{C-1}``, correct when not class 0."""
    out = {}
    for name, enc in parts.items():
        probs = M.predict_proba(model, enc, batch_size, device).double()  # (N, C)
        labels, c = enc.labels, probs.shape[1]
        p_gold = torch.where(
            labels == c, probs[:, 1:].sum(1), probs.gather(1, labels.clamp(max=c - 1)[:, None])[:, 0]
        )
        pred = probs.argmax(1)
        correct = torch.where(labels == c, pred != 0, pred == labels)
        out[name] = {
            "n": len(enc),
            "loss": float(-p_gold.clamp_min(1e-12).log().mean()) if len(enc) else None,
            "accuracy": float(correct.double().mean()) if len(enc) else None,
        }
    return out


def anchor_schedule(pool_size: int, anchors: int, iterations: int, seed: int) -> list[list[int]]:
    """The anchors of every iteration for one seed (rows of the anchor pool), the same for every method."""
    rng = random.Random(f"fastif-correct:{seed}:anchors")
    return [sorted(rng.sample(range(pool_size), anchors)) for _ in range(iterations)]


@dataclass
class LoopInputs:
    """What one (method, seed) loop reads; nothing here is modified."""

    train: Examples  # curvature (the training set)
    pool: Examples  # candidates (the training set or a new pool), row i = kNN position i
    pool_ids: list[str]
    index: Any  # KnnIndex over the pool
    allowed: Tensor  # (N_pool,) bool: False for pool rows equal to an evaluated example
    anchors: Examples  # the anchor pool, encoded
    query: Callable[[list[int]], Tensor]  # anchor rows -> (1, d) kNN query (the anchors' mean feature)
    parts: dict[str, Any]  # evaluation parts, encoded


def candidates_of(inputs: LoopInputs, anchor_rows: list[int], k: int) -> list[int]:
    """The ``k`` nearest allowed pool rows of the anchors' mean feature (k capped at the allowed count)."""
    n_allowed = int(inputs.allowed.sum())
    want = min(k + (len(inputs.pool_ids) - n_allowed), inputs.index.ntotal)
    _, pos = inputs.index.search(inputs.query(anchor_rows), want)
    rows = [p for p in pos[0].tolist() if p >= 0 and bool(inputs.allowed[p])]
    return rows[: min(k, n_allowed)]


def run_loop(
    model: Any,
    make_objective: ObjectiveFactory,
    inputs: LoopInputs,
    method: str,
    seed: int,
    cfg: CorrectConfig,
    *,
    device: str = "cpu",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """One method and seed: ``cfg.iterations`` steps on ``model`` (changed in place). Returns the curve (the
    evaluation after every iteration), the chosen pool ids per iteration, s_test statistics and seconds."""
    objective = make_objective(model)
    schedule = anchor_schedule(len(inputs.anchors), cfg.anchors, cfg.iterations, seed)
    rng = random.Random(f"fastif-correct:{seed}:random")
    allowed_rows = [i for i, ok in enumerate(inputs.allowed.tolist()) if ok]
    curve, picks, solver, started = [], [], [], time.perf_counter()
    for t, anchor_rows in enumerate(schedule):
        if method in ("helpful", "harmful"):
            cands = candidates_of(inputs, anchor_rows, cfg.k)
            values, stats = anchor_influence(
                objective, inputs.anchors.collate(anchor_rows), inputs.train, inputs.pool, cands, cfg
            )
            chosen, solver = pick(method, values, cands, cfg.top), [*solver, stats]
        elif method == "random":
            chosen = rng.sample(allowed_rows, min(cfg.top, len(allowed_rows)))
        else:  # anchors
            chosen = []
        batch = inputs.anchors.collate(anchor_rows) if method == "anchors" else inputs.pool.collate(chosen)
        sgd_step(objective, batch, cfg.lr)
        picks.append([inputs.pool_ids[i] for i in chosen])
        curve.append(evaluate(model, inputs.parts, device=device))
        if progress is not None:
            progress((t + 1) / cfg.iterations, f"{method} seed {seed}: iteration {t + 1}/{cfg.iterations}")
    return {
        "seed": seed,
        "curve": curve,
        "picks": picks,
        "anchors": schedule,
        "s_test": solver,
        "seconds": time.perf_counter() - started,
    }
