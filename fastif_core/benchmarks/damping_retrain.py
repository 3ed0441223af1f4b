"""``fastif bench --section damping --retrain`` (issue 28, App. A.3): which damping μ predicts retraining.

For each μ of the damping sweep and each of the first ``--retrain-examples`` test examples, the top-m
helpful, the top-m harmful and m random training examples are taken from the test's k nearest candidates
(the population FastIF scores; the random set does not depend on μ), the classifier is fine-tuned again
from the workspace's base checkpoint with its TrainConfig (same seed) on the training set without them,
and the actual change in the test loss is compared with the predicted ``-Σ_{z∈S} I_μ(z, z_test) / N``.
The training-noise floor is the same fine-tuning with nothing removed under two seeds (the workspace's
and the next one): ``|loss_seed+1 - loss_seed|`` per test example. The seed-``seed`` run is also the
baseline every change is measured from (``baseline_minus_workspace`` shows how exactly it reproduces the
workspace's own checkpoint).

Each fine-tuning is one item of a plan: the two baselines first, then for m largest first, μ in bisection
order (the base μ, the smallest, then the middles: a stopped run has the extremes of the sweep), each test
example's random set (first μ only), helpful and harmful sets. Items with the same removed rows are
fine-tuned once. Each finished item is a JSON file under ``OUT/damping-retrain/`` (the test losses of every
retrained model, its removed rows, seconds), keyed by the checkpoint's content, the base checkpoint, the
train config, the seed and the removed rows, so a stopped run resumes; several processes running the same
command share the plan (an item being trained carries a ``.claim`` file with its owner's host and pid).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fastif_core.benchmarks.common import TestExample, mean_std
from fastif_core.benchmarks.quality import correlations
from fastif_core.benchmarks.retrain import KINDS, fine_tuned, fitted_positions, test_loss, train_setup
from fastif_core.benchmarks.solvers import model_key
from fastif_core.config import config_hash, to_dict
from fastif_core.progress import Progress, ignore

DEFAULT_MS = (10, 100)


# ------------------------------------------------------------------------------------------------ plan
def bisection_order(mus: Sequence[float], base_mu: float) -> list[float]:
    """The base μ, the smallest, then the μ that halve the remaining gaps (in log-order of the sweep)."""
    rest = sorted({float(m) for m in mus} - {float(base_mu)}, reverse=True)
    order, spans = [float(base_mu)], [rest]
    if rest:
        order.append(rest[-1])
        spans = [rest[:-1]]
    while spans:
        span = spans.pop(0)
        if span:
            mid = len(span) // 2
            order.append(span[mid])
            spans += [span[:mid], span[mid + 1 :]]
    return order


def removal_rows(candidates: Sequence[int], values: Tensor, m: int, kind: str, seed: int) -> tuple[int, ...]:
    """Training positions to remove: of the candidates, the m most helpful (most negative influence), the
    m most harmful, or m drawn at random (``seed``); sorted, so equal sets have equal keys."""
    if kind == "random":
        pick = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))[:m].tolist()
    else:
        order = torch.argsort(values.double(), stable=True).tolist()
        pick = order[:m] if kind == "helpful" else order[::-1][:m]
    return tuple(sorted(int(candidates[j]) for j in pick))


def plan(
    tests: Sequence[dict[str, Any]], mus: Sequence[float], base_mu: float, ms: Sequence[int], seed: int
) -> list[dict[str, Any]]:
    """The fine-tunings in run order (see the module docstring), each ``{"seed", "rows", "uses"}`` with
    ``uses`` the ``(test, kind, m, μ)`` pairs it answers. ``tests``: ``{"id", "candidates", "values":
    {f"{μ:g}": Tensor}}`` (a μ missing from ``values`` did not converge and gets no removal sets)."""
    items: dict[tuple[int, tuple[int, ...]], dict[str, Any]] = {}

    def add(train_seed: int, rows: tuple[int, ...], use: tuple | None) -> None:
        item = items.setdefault((train_seed, rows), {"seed": train_seed, "rows": rows, "uses": []})
        if use is not None:
            item["uses"].append(use)

    add(seed, (), None)
    add(seed + 1, (), None)
    for m in sorted(set(ms), reverse=True):
        for mu in bisection_order(mus, base_mu):
            for i, t in enumerate(tests):
                values = t["values"].get(f"{mu:g}")
                if values is None:
                    continue
                m_ = min(m, len(t["candidates"]))
                for kind in KINDS:
                    rows = removal_rows(t["candidates"], values, m_, kind, seed + i)
                    add(seed, rows, (t["id"], kind, m, mu))
    return list(items.values())


# ------------------------------------------------------------------------------------------------ store
class RetrainStore:
    """Finished fine-tunings as JSON files under ``directory``; ``.claim`` files for those in progress."""

    def __init__(self, directory: Path, fixed: dict[str, Any]) -> None:
        self.directory, self.fixed = directory, fixed
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, item: dict[str, Any]) -> Path:
        rows = hashlib.sha256(str(list(item["rows"])).encode()).hexdigest()[:16]
        key = {**self.fixed, "seed": item["seed"], "rows": rows}
        return self.directory / f"s{item['seed']}-m{len(item['rows'])}-{config_hash(key)}.json"

    def read(self, item: dict[str, Any]) -> dict[str, Any] | None:
        path = self.path(item)
        return json.loads(path.read_text()) if path.exists() else None

    def claim(self, item: dict[str, Any]) -> bool:
        """Take the item for this process: False when it is done or a live process holds it."""
        path = self.path(item)
        if path.exists():
            return False
        claim = path.with_suffix(".claim")
        owner = {"host": socket.gethostname(), "pid": os.getpid()}
        for _ in range(2):
            try:
                fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if _alive(claim):
                    return False
                claim.unlink(missing_ok=True)  # its owner died: take it over
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(owner, f)
            if path.exists():  # finished (and its claim removed) between the check above and this claim
                claim.unlink(missing_ok=True)
                return False
            return True
        return False

    def write(self, item: dict[str, Any], record: dict[str, Any]) -> None:
        path = self.path(item)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": {**self.fixed, "seed": item["seed"]}, **record}))
        tmp.replace(path)
        path.with_suffix(".claim").unlink(missing_ok=True)

    def release(self, item: dict[str, Any]) -> None:
        self.path(item).with_suffix(".claim").unlink(missing_ok=True)


def _alive(claim: Path) -> bool:
    """Whether the claim's owner still runs (a claim from another host is taken as alive)."""
    try:
        owner = json.loads(claim.read_text())
    except (OSError, ValueError):
        return True  # being written right now
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------------------------------------ run
def run_retraining(
    loaded: Any,
    examples: Sequence[TestExample],
    tests: Sequence[dict[str, Any]],
    out_dir: Path,
    *,
    mus: Sequence[float],
    base_mu: float,
    ms: Sequence[int] = DEFAULT_MS,
    seed: int = 0,
    max_runs: int | None = None,
    progress: Progress = ignore,
) -> dict[str, Any]:
    """Fine-tune the plan's items not yet stored (at most ``max_runs`` by this process), then summarise
    every stored one; ``OUT/damping-retrain.json`` is rewritten after every fine-tuning. ``tests`` (the
    removal sets' test examples: ``{"id", "correct", "candidates", "values"}``) are some of ``examples``;
    every fine-tuned model's loss is stored for all ``examples``, so a later run may retrain for more of
    them and reuse the baselines."""
    tcfg, base_path = train_setup(loaded)
    n = len(loaded.train)
    items = plan(tests, mus, base_mu, ms, seed)
    fixed = {
        "model": model_key(loaded),
        "base": str(base_path),
        "train_config": to_dict(replace(tcfg, seed=0)),
        "loss": "data",  # the test's own loss, no regulariser (records of the summed loss are not reused)
    }
    store = RetrainStore(out_dir / "damping-retrain", fixed)
    workspace_loss = {ex.id: test_loss(loaded.objective, ex.batch) for ex in examples}
    started, ran = time.perf_counter(), 0

    def write() -> dict[str, Any]:
        records = [store.read(item) for item in items]
        result = summarize(items, records, tests, n, workspace_loss, mus)
        result.update(
            settings={"ms": sorted(set(ms)), "mus": list(mus), "base_mu": base_mu, "seed": seed},
            base_checkpoint=str(base_path),
            train_config=to_dict(tcfg),
            num_train=n,
            planned=len(items),
            done=sum(r is not None for r in records),
            ran_now=ran,
            seconds_now=time.perf_counter() - started,
        )
        from fastif_core.benchmarks.suite import json_safe

        tmp = out_dir / f"damping-retrain.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(json_safe(result), indent=2, allow_nan=False))
        tmp.replace(out_dir / "damping-retrain.json")
        return result

    for i, item in enumerate(items):
        if max_runs is not None and ran >= max_runs:
            break
        if not store.claim(item):
            continue
        progress(i / len(items), f"fine-tuning {i + 1}/{len(items)} (m = {len(item['rows'])})")
        try:
            t0 = time.perf_counter()
            keep = sorted(set(fitted_positions(loaded)) - set(item["rows"]))
            obj = fine_tuned(loaded, keep, replace(tcfg, seed=item["seed"]), base_path)
            losses = {ex.id: test_loss(obj, ex.batch) for ex in examples}
            record = {"rows": list(item["rows"]), "losses": losses, "seconds": time.perf_counter() - t0}
        except BaseException:
            store.release(item)
            raise
        store.write(item, record)
        ran += 1
        write()
    progress(1.0, f"wrote {out_dir / 'damping-retrain.json'}")
    return write()


# ------------------------------------------------------------------------------------------------ summary
def summarize(
    items: Sequence[dict[str, Any]],
    records: Sequence[dict[str, Any] | None],
    tests: Sequence[dict[str, Any]],
    n: int,
    workspace_loss: dict[str, float],
    mus: Sequence[float],
) -> dict[str, Any]:
    """The noise floor, and per μ the (test, removal set) points with the Pearson / Spearman of predicted
    against actual change, their sign agreement and the least-squares slope of actual on predicted."""
    base, other = records[0], records[1]
    by_test = {t["id"]: t for t in tests}
    noise = None
    if base is not None and other is not None:
        diffs = [abs(other["losses"][t] - base["losses"][t]) for t in base["losses"]]
        noise = {
            "seeds": [items[0]["seed"], items[1]["seed"]],
            "abs_change": mean_std(diffs),
            "max": max(diffs),
        }
    points: dict[str, list[dict[str, Any]]] = {f"{mu:g}": [] for mu in mus}
    if base is not None:
        for item, record in zip(items[2:], records[2:], strict=True):
            if record is None:
                continue
            for test, kind, m, mu in item["uses"]:
                t = by_test[test]
                values = t["values"][f"{mu:g}"]
                where = {c: j for j, c in enumerate(t["candidates"])}
                removed = torch.tensor([where[r] for r in item["rows"]], dtype=torch.long)
                points[f"{mu:g}"].append(
                    {
                        "test": test,
                        "correct": t["correct"],
                        "kind": kind,
                        "m": m,
                        "actual": record["losses"][test] - base["losses"][test],
                        "predicted": -float(values[removed].sum()) / n,
                    }
                )
    return {
        "noise_floor": noise,
        "baseline_minus_workspace": None
        if base is None
        else {t: base["losses"][t] - workspace_loss[t] for t in workspace_loss},
        "fine_tunings": [
            {"seed": it["seed"], "m": len(it["rows"]), "uses": len(it["uses"]), "seconds": r["seconds"]}
            for it, r in zip(items, records, strict=True)
            if r is not None
        ],
        "by_mu": {
            mu: fit(ps, None if noise is None else noise["abs_change"]["mean"]) for mu, ps in points.items()
        },
    }


def fit(points: list[dict[str, Any]], noise: float | None) -> dict[str, Any]:
    """How well predicted changes match actual ones over ``points``."""
    actual = torch.tensor([p["actual"] for p in points], dtype=torch.float64)
    predicted = torch.tensor([p["predicted"] for p in points], dtype=torch.float64)
    c = correlations(predicted, actual) if len(points) >= 3 else {"pearson": None, "spearman": None}
    signs = [p for p in points if p["predicted"] != 0 and p["actual"] != 0]
    slope = (
        float((actual * predicted).sum() / (predicted * predicted).sum())
        if points and predicted.any()
        else None
    )
    means = {}
    for kind in KINDS:
        for m in sorted({p["m"] for p in points}):
            sel = [p for p in points if p["kind"] == kind and p["m"] == m]
            if sel:
                means[f"{kind}/{m}"] = {
                    "actual": statistics.fmean(p["actual"] for p in sel),
                    "predicted": statistics.fmean(p["predicted"] for p in sel),
                    "n": len(sel),
                }
    return {
        "pairs": len(points),
        "pearson": c["pearson"],
        "spearman": c["spearman"],
        "sign_agreement": (sum((p["predicted"] > 0) == (p["actual"] > 0) for p in signs) / len(signs))
        if signs
        else None,
        "slope_actual_on_predicted": slope,
        "above_noise": None if noise is None else sum(abs(p["actual"]) > noise for p in points),
        "by_kind": means,
        "points": points,
    }
