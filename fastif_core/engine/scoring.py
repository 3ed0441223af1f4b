"""Every candidate-scoring kernel: the influence of one candidate set on M s_test vectors at once.

``I[m, i] = -(∇ℓ(z_i) · s_m)`` (the sign convention of :mod:`fastif_core.engine.influence`), plus the L2
term's dot ``∇(wd·Σθ²) · s_m`` -- the same for every candidate -- when ``include_l2``. Two exact paths:

- ``"jvp"``: forward-mode ``torch.func.jvp`` of the per-example loss vector, one pass per s_test
  (M passes per candidate batch); memory O(parameters + one batch of activations).
- ``"per_example"``: one hooked forward and backward per candidate batch
  (:func:`fastif_core.engine.per_example.per_example_dots`), the per-example gradients contracted with all
  M rows of ``S`` layer by layer; no ``(N, P)`` or ``(B, P)`` tensor exists.

``"auto"`` picks the cheaper one by the cost model of :func:`scoring_costs` (JVP for one test).
:func:`score_candidates` is :func:`score_many` of one s_test by JVP; :func:`score_candidates_reference`
is the deliberately slow reference (one full backward per candidate), for tests.

API: :func:`score_many`, :func:`score_candidates`, :func:`score_candidates_reference`,
:func:`scoring_costs`, :func:`choose_method`, ``METHODS``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fastif_core.engine.examples import Batch, Examples, length_sorted_chunks, to_device
from fastif_core.engine.objective import Objective, objective_device
from fastif_core.engine.per_example import per_example_dots, trainable_layers
from fastif_core.errors import ConfigError
from fastif_core.progress import Progress

METHODS = ("auto", "jvp", "per_example")

# Cost model constants, in units of one multiply-add of a plain no-grad forward (see scoring_costs).
# Calibrated on the packaged MiniLM fine-tuned on the 8K MNLI workspace (3 labels, embeddings frozen, all
# 6 layers trainable: P = 10.8M; 64 training candidates, mean 34.5 tokens) on an idle 2-core AVX2 CPU by
#   fastif bench -w workspaces/mnli8k --out bench-out/mnli8k-cross --section many --many-tests 0 \
#       --matrix-tests 0 --many-preset gauss_newton_direct
# and fastif_core.benchmarks.scoring.calibration of its crossover.raw: JVP_COST 1.48, BACKWARD_COST 2.37,
# DOT_COST 0.82 (7.2e-11 s per forward multiply-add). Seconds per (candidate, test) pair, jvp vs
# per_example: M=1 0.063 vs 0.078, M=2 0.067 vs 0.046, M=4 0.066 vs 0.025, M=16 0.072 vs 0.0069, M=32
# 0.064 vs 0.0033 (JVP at M > 2 timed on 2 tangents and scaled: M independent passes). So the cross-over
# is M* = (1 + BACKWARD_COST) / (1 + JVP_COST - DOT_COST/T) ≈ 1.4: JVP for one test, per-example
# gradients from two on (1.5x faster at M = 2, 19x at M = 32). An earlier calibration on a loaded machine
# (load average 7-9) gave 3.4 / 3.0 / 1.0, i.e. M* ≈ 1, which picked per-example gradients at M = 1 (25%
# slower there).
JVP_COST = 1.5  # the tangent part of a JVP pass, per multiply-add of the trainable Linear layers
BACKWARD_COST = 2.4  # hooked backward + per-example ∇W_i, per multiply-add of the trainable Linear layers
DOT_COST = 0.8  # contracting one per-example gradient element with one s_test


def _regularizer_dot(objective: Objective, s: dict[str, Tensor]) -> Tensor:
    """``∇(wd·Σθ²) · s = 2·wd·Σ_decayed θ·s``: the same for every candidate, added analytically."""
    if objective.weight_decay == 0.0 or not objective.decayed:
        return torch.zeros((), dtype=objective.dtype, device=objective.device)
    params = objective.params
    return 2.0 * objective.weight_decay * sum((params[n] * s[n]).sum() for n in objective.decayed)


def _jvp_loss_dots(objective: Objective, batch: Batch, s: dict[str, Tensor]) -> Tensor:
    """``∇ℓ(z_i) · s`` ``(B,)`` for every row by one forward-mode pass (data term only)."""

    def losses(params: dict[str, Tensor]) -> Tensor:
        return objective.data_loss(params, batch)

    _, tangent = torch.func.jvp(losses, (objective.params,), (s,))
    return tangent


def score_candidates(
    objective: Objective,
    s_test: Tensor,
    train: Examples,
    indices: Sequence[int],
    batch_size: int = 64,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    *,
    include_l2: bool = False,
) -> Tensor:
    """Influence ``-(∇ℓ(z_i)·s_test)`` ``(k,)`` of ``train[indices[i]]``, in the order of ``indices``
    (``include_l2``: ``∇(ℓ + wd·Σθ²)``): :func:`score_many` of the one row ``s_test`` by JVP."""
    s = s_test.reshape(1, -1)
    return score_many(objective, s, train, indices, batch_size, device, progress, include_l2, method="jvp")[0]


def score_candidates_reference(
    objective: Objective,
    s_test: Tensor,
    train: Examples,
    indices: Sequence[int],
    device: torch.device | str | None = None,
    *,
    include_l2: bool = False,
) -> Tensor:
    """The slow reference: one full backward per candidate, ``-(∇ℓ(z_i)·s_test)`` ``(k,)``."""
    device = objective_device(objective, device)
    s = s_test.to(device, objective.dtype)
    values = []
    with objective.evaluating():
        for i in indices:
            values.append(-(objective.grad(train.collate([int(i)]), include_l2=include_l2) @ s))
    return torch.stack(values) if values else torch.empty(0, dtype=objective.dtype, device=device)


def model_sizes(objective: Objective) -> dict[str, int]:
    """Multiply-adds per token of all / trainable Linear layers; contracted dense and embedding sizes."""
    trainable = set(objective.names)
    sizes = dict.fromkeys(("forward", "trainable", "dense", "embedding"), 0)
    for path, module in objective.model.named_modules():
        own = [p for n, p in module.named_parameters(recurse=False) if f"{path}.{n}".lstrip(".") in trainable]
        if isinstance(module, nn.Linear):
            sizes["forward"] += module.weight.numel()
            sizes["trainable"] += module.weight.numel() if own else 0
        if isinstance(module, nn.Embedding):
            sizes["embedding"] += module.embedding_dim if own else 0
        else:
            sizes["dense"] += sum(p.numel() for p in own)
    return sizes


def scoring_costs(objective: Objective, m: int, length: float) -> dict[str, float]:
    """Estimated cost per candidate of each path, in forward multiply-adds (attention's T² terms left out).

    With ``T`` = mean tokens per candidate, ``F`` = multiply-adds per token of all Linear layers,
    ``F_t`` = of the trainable ones, ``D`` = trainable Linear + LayerNorm parameters and ``E`` = summed
    width of the trainable embeddings::

        jvp          = M · (T·F + JVP_COST·T·F_t)                 every tangent pass reruns the forward
        per_example  = T·F + BACKWARD_COST·T·F_t + M · DOT_COST·(D + T·E)

    so per-example gradients win from ``M* ≈ (1 + BACKWARD_COST) / (1 + JVP_COST - DOT_COST/T)`` on
    when everything but the embeddings is trainable (``F = F_t ≈ D``): the extra cost per s_test is a
    full forward pass for JVP, against reading ``P`` numbers once for the contraction.
    """
    s = model_sizes(objective)
    forward = length * s["forward"]
    return {
        "jvp": m * (forward + JVP_COST * length * s["trainable"]),
        "per_example": forward
        + BACKWARD_COST * length * s["trainable"]
        + m * DOT_COST * (s["dense"] + length * s["embedding"]),
    }


def choose_method(objective: Objective, m: int, length: float) -> str:
    """``"jvp"`` or ``"per_example"``, whichever :func:`scoring_costs` estimates cheaper (ties: jvp);
    ``"jvp"`` when a trainable parameter's module has no per-example rule."""
    try:
        trainable_layers(objective)
    except ConfigError:
        return "jvp"
    costs = scoring_costs(objective, m, length)
    return "per_example" if costs["per_example"] < costs["jvp"] else "jvp"


def _jvp_dots(objective: Objective, batch: Batch, s_rows: list[dict[str, Tensor]]) -> Tensor:
    """``∇ℓ(z_i) · s_m`` ``(M, B)``: one forward-mode pass per s_test."""
    with torch.no_grad():
        return torch.stack([_jvp_loss_dots(objective, batch, s) for s in s_rows])


def _dots(
    objective: Objective, batch: Batch, method: str, s: Tensor, s_rows: list[dict[str, Tensor]]
) -> Tensor:
    """``∇ℓ(z_i) · s_m`` ``(M, B)`` by ``method`` ("jvp" or "per_example")."""
    if method == "per_example":
        return per_example_dots(objective, batch, s)
    return _jvp_dots(objective, batch, s_rows)


def _rows_of(objective: Objective, s: Tensor, device: torch.device) -> Tensor:
    """``S`` as ``(M, P)`` on the objective's device and dtype; a clear error for any other shape."""
    if s.dim() != 2 or s.shape[1] != objective.num_params:
        raise ConfigError(f"S has shape {tuple(s.shape)}; expected (M, {objective.num_params})")
    return s.to(device, objective.dtype)


def _resolve_method(objective: Objective, method: str, m: int, lengths: Tensor) -> str:
    if method not in METHODS:
        raise ConfigError(f"method={method!r} is invalid: allowed {', '.join(METHODS)}")
    if method != "auto":
        return method
    return choose_method(objective, m, float(lengths.double().mean()) if len(lengths) else 1.0)


def score_many(
    objective: Objective,
    s: Tensor,
    train: Examples,
    indices: Sequence[int],
    batch_size: int = 64,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    include_l2: bool = False,
    method: str = "auto",
) -> Tensor:
    """Influence ``-(∇ℓ(z_i) · s_m)`` ``(M, k)`` of ``train[indices[i]]`` on each row of ``s (M, P)``.

    Columns follow the order of ``indices``; candidates are batched by similar length, longest first.
    ``include_l2`` adds ``-∇(wd·Σθ²)·s_m`` to row m. ``method`` is ``"jvp"``, ``"per_example"`` or
    ``"auto"`` (:func:`choose_method`); ``progress`` gets ``(fraction, message)`` after every batch.
    Memory beyond ``s``: one batch of activations (jvp); per_example adds the batch's layer outputs'
    gradients and at most ``per_example._BLOCK`` elements of per-example gradients per layer.
    """
    device = objective_device(objective, device)
    s = _rows_of(objective, s, device)
    idx = torch.as_tensor([int(i) for i in indices], dtype=torch.long)
    lengths = train.lengths()[idx] if len(idx) else torch.zeros(0, dtype=torch.long)
    method = _resolve_method(objective, method, len(s), lengths)
    s_rows = [objective.unflatten(row) for row in s]
    out = torch.empty(len(s), len(idx), dtype=objective.dtype, device=device)  # (M, k)
    with objective.evaluating():
        for done, positions in _batches(idx, lengths, batch_size):
            batch = to_device(train.collate(idx[positions].tolist()), device)
            out[:, torch.as_tensor(positions, device=device)] = -_dots(objective, batch, method, s, s_rows)
            if progress is not None:
                progress(
                    done / len(idx), f"scored {done}/{len(idx)} candidates for {len(s)} tests ({method})"
                )
    if include_l2:
        out -= torch.stack([_regularizer_dot(objective, row) for row in s_rows]).reshape(-1, 1).to(out)
    return out


def _batches(idx: Tensor, lengths: Tensor, batch_size: int):
    """``(candidates done so far, positions into idx)`` per length-sorted batch."""
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} is invalid: allowed an integer >= 1")
    done = 0
    for positions in length_sorted_chunks(range(len(idx)), lengths, batch_size):
        done += len(positions)
        yield done, positions
