"""Retraining check (App. A.3): remove the top-m helpful / harmful / random training examples, retrain
from the same initialisation with the same seed, and compare the change in test loss with the one
influence predicts, ``Δ ≈ -Σ_{z∈S} I(z, z_test) / N`` (removing z is up-weighting it by -1/N).

Expected signs: removing harmful examples (I > 0) lowers the test loss, removing helpful ones raises it,
random removal changes little. Two models:

- **convex** (always): multinomial L2 logistic regression on the workspace's frozen pooled features
  (float64, every parameter decayed so the Hessian is positive definite), trained to convergence by
  L-BFGS; influence uses the exact Hessian solve (``hessian.exact_hessian``), so it is the ground truth
  influence functions promise;
- **transformer** (``--retrain``): the workspace's classifier fine-tuned again from its base checkpoint
  with the workspace's TrainConfig (same seed), on the training set minus the removed examples; its
  influence comes from the full-enumeration run (LiSSA, original preset). Removal also changes which
  examples share a mini-batch, so part of the change is training noise.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fastif_core.benchmarks.common import BenchConfig, TestExample, clip, mean_std
from fastif_core.benchmarks.quality import correlations
from fastif_core.config import to_dict
from fastif_core.engine.curvature import exact_hessian
from fastif_core.engine.examples import TensorExamples
from fastif_core.engine.influence import test_gradient
from fastif_core.engine.objective import Objective, tensor_forward
from fastif_core.engine.scoring import score_candidates
from fastif_core.progress import Progress
from fastif_core.workspace.layout import two_way_aware_cross_entropy

CONVEX_WEIGHT_DECAY = 1e-3
KINDS = ("helpful", "harmful", "random")


def test_loss(objective: Objective, batch: dict[str, Tensor]) -> float:
    """The test example's own loss (its per-example loss alone, without the ``wd·Σθ²`` regulariser that
    ``batch_loss`` adds): the quantity whose change influence predicts."""
    with torch.no_grad():
        return float(objective.data_loss(objective.params, batch).mean())


test_loss.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported into one


def removal_sets(values: Tensor, ms: Sequence[int], seed: int) -> dict[str, dict[int, list[int]]]:
    """Training positions to remove: top-m most helpful (most negative), most harmful, and m at random."""
    order = torch.argsort(values.double(), stable=True).tolist()
    shuffled = random.Random(seed).sample(range(len(values)), len(values))
    return {
        "helpful": {m: order[:m] for m in ms},
        "harmful": {m: order[::-1][:m] for m in ms},
        "random": {m: shuffled[:m] for m in ms},
    }


def summarize(points: list[dict[str, Any]], ms: Sequence[int]) -> dict:
    """Mean actual and predicted change per kind and m, their Pearson correlation, and the sign checks."""
    table = {
        kind: {
            str(m): {
                "actual": mean_std([p["actual"] for p in points if p["kind"] == kind and p["m"] == m]),
                "predicted": mean_std([p["predicted"] for p in points if p["kind"] == kind and p["m"] == m]),
            }
            for m in ms
        }
        for kind in KINDS
    }
    actual = torch.tensor([p["actual"] for p in points], dtype=torch.float64)
    predicted = torch.tensor([p["predicted"] for p in points], dtype=torch.float64)
    top = str(max(ms))
    mean = {kind: table[kind][top]["actual"]["mean"] for kind in KINDS}
    signs = {
        "harmful_lowers_loss": mean["harmful"] < 0,
        "helpful_raises_loss": mean["helpful"] > 0,
        "harmful_below_random_below_helpful": mean["harmful"] < mean["random"] < mean["helpful"],
    }
    return {
        "by_kind": table,
        "pearson_predicted_vs_actual": correlations(predicted, actual)["pearson"],
        "signs_at_max_m": signs,
        "points": points,
    }


# --------------------------------------------------------------------------------------------- convex
def convex_data(loaded: Any) -> TensorExamples:
    """Frozen pooled features ``(N, d)`` float64 of the training set (FAISS order) with its labels."""
    rows = torch.as_tensor([loaded.feature_rows[i] for i in loaded.train_ids])
    return TensorExamples(loaded.features[rows].double(), loaded.train.labels.clone())


def fit_convex(model: nn.Module, objective: Objective, train: TensorExamples, rows: Sequence[int]) -> float:
    """Minimise the mean objective over ``rows`` by full-batch L-BFGS; returns the final gradient norm."""
    batch = train.collate(rows)
    params = list(model.parameters())
    opt = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=2000,
        tolerance_grad=1e-11,
        tolerance_change=1e-15,
        history_size=30,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = objective.batch_loss(dict(model.named_parameters()), batch)
        loss.backward()
        return loss

    opt.step(closure)
    return float(torch.cat([p.grad.reshape(-1) for p in params]).norm())


def convex_check(loaded: Any, examples: Sequence[TestExample], cfg: BenchConfig, progress: Progress) -> dict:
    """The retraining check on the convex model, over every test example."""
    train = convex_data(loaded)
    n, d = train.x.shape
    torch.manual_seed(cfg.seed)
    model = nn.Linear(d, len(loaded.label_names)).double()
    init = copy.deepcopy(model.state_dict())
    obj = Objective(
        model,
        forward=tensor_forward,
        loss=two_way_aware_cross_entropy,
        weight_decay=CONVEX_WEIGHT_DECAY,
        decay=lambda name, module: True,
    )
    grad_norms = [fit_convex(model, obj, train, range(n))]
    trained = copy.deepcopy(model.state_dict())
    hessian = exact_hessian(obj, train.collate(range(n)))  # (P, P)
    ms, points = clip(cfg.retrain_ms, n - 1), []
    for i, ex in enumerate(examples):
        progress(i / len(examples), f"convex retraining: test example {i + 1}/{len(examples)}")
        test = {"x": loaded.features[loaded.feature_rows[ex.id]].double()[None], "labels": ex.batch["labels"]}
        model.load_state_dict(trained)
        values = score_candidates(
            obj, torch.linalg.solve(hessian, test_gradient(obj, test)), train, range(n), batch_size=4096
        )
        base = test_loss(obj, test)
        for kind, by_m in removal_sets(values, ms, cfg.seed + i).items():
            for m, removed in by_m.items():
                model.load_state_dict(init)
                grad_norms.append(fit_convex(model, obj, train, sorted(set(range(n)) - set(removed))))
                loss = test_loss(obj, test)
                points.append(
                    {
                        "example_id": ex.id,
                        "kind": kind,
                        "m": m,
                        "actual": loss - base,
                        "predicted": -float(values[removed].sum()) / n,
                    }
                )
    model.load_state_dict(trained)
    return {
        "model": f"L2 logistic regression on frozen pooled features (d={d}, {len(loaded.label_names)} classes)",
        "weight_decay": CONVEX_WEIGHT_DECAY,
        "num_train": n,
        "ms": ms,
        "max_final_grad_norm": max(grad_norms),
        **summarize(points, ms),
    }


# ---------------------------------------------------------------------------------------- transformer
def transformer_check(
    loaded: Any,
    examples: Sequence[TestExample],
    full_values: Sequence[Tensor],
    cfg: BenchConfig,
    progress: Progress,
) -> dict:
    """The retraining check on the transformer (fine-tuning once per removal set, plus one baseline)."""
    tcfg, base_path = train_setup(loaded)
    n = len(loaded.train_ids)
    ms = clip(cfg.retrain_ms, n - 1)
    chosen = list(zip(examples, full_values, strict=True))[: cfg.retrain_examples]
    runs = 1 + len(chosen) * len(KINDS) * len(ms)
    done = [0]

    def fine_tune(rows: Sequence[int]) -> Callable[[TestExample], float]:
        progress(done[0] / runs, f"transformer retraining {done[0] + 1}/{runs}")
        done[0] += 1
        obj = fine_tuned(loaded, rows, tcfg, base_path)
        return lambda ex: test_loss(obj, ex.batch)

    fitted = fitted_positions(loaded)
    baseline = fine_tune(fitted)
    points = []
    for i, (ex, values) in enumerate(chosen):
        base = baseline(ex)
        for kind, by_m in removal_sets(values, ms, cfg.seed + i).items():
            for m, removed in by_m.items():
                loss = fine_tune(sorted(set(fitted) - set(removed)))(ex)
                points.append(
                    {
                        "example_id": ex.id,
                        "kind": kind,
                        "m": m,
                        "actual": loss - base,
                        "predicted": -float(values[removed].sum()) / n,
                    }
                )
    return {
        "model": str(base_path),
        "train_config": to_dict(tcfg),
        "num_train": n,
        "ms": ms,
        "examples": len(chosen),
        "fine_tunings": runs,
        **summarize(points, ms),
    }


def fine_tuned(loaded: Any, rows: Sequence[int], tcfg: Any, base_path: str) -> Objective:
    """The objective of the classifier fine-tuned from ``base_path`` with ``tcfg`` (its seed: initialisation
    of the head, batch order, dropout) on the training positions ``rows`` of ``loaded.train``."""
    from fastif_core.modeling import classifier as M

    model, _ = M.load_classifier(base_path, tcfg.labels, loaded.device, seed=tcfg.seed)
    M.freeze_layers(model, tcfg.freeze_layers)
    M.train_classifier(model, loaded.train.subset(rows), tcfg, loaded.device, progress=False)
    return Objective(model, loss=two_way_aware_cross_entropy, weight_decay=tcfg.weight_decay)


def fitted_positions(loaded: Any) -> range:
    """The training positions the workspace's model was fine-tuned on: all of them, or the first
    ``num_fit`` when it was prepared with ``--fit-subset`` (a retraining fine-tunes on these minus the
    removed ones, so its baseline is the workspace's model; removing an unfitted example changes nothing)."""
    return range(int(loaded.manifest.get("num_fit") or len(loaded.train)))


def train_setup(loaded: Any) -> tuple[Any, str]:
    """The workspace's TrainConfig (from its checkpoint) and the base checkpoint it was fine-tuned from."""
    from fastif_core.config import TrainConfig, from_dict
    from fastif_core.modeling import classifier as M
    from fastif_core.workspace.layout import WorkspacePaths

    checkpoint = WorkspacePaths.of(loaded.root, loaded.manifest).model_dir(loaded.model_id)
    meta = json.loads((checkpoint / M.TRAIN_META).read_text())
    base = loaded.manifest.get("prepare_config", {}).get("model")
    return from_dict(TrainConfig, meta["train_config"]), base or M.default_model_path()
