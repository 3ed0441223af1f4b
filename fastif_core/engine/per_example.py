"""Per-example gradients of the data loss from one batched backward, by module hooks (Opacus, BackPACK).

For every module that owns trainable parameters a forward hook keeps its input ``a`` and a hook on its
output keeps the output gradient ``g`` of the *summed* per-example loss ``Σ_i ℓ_i`` (eval mode), so
row i of ``g`` is ``∂ℓ_i/∂out_i``, unscaled by the batch size. Per-example parameter gradients follow
in closed form::

    nn.Linear      ∇W_i = Σ_t g_itᵀ a_it          ∇b_i = Σ_t g_it
    nn.LayerNorm   ∇γ_i = Σ_t g_it ⊙ x̂_it         ∇β_i = Σ_t g_it       (x̂ = normalised input)
    nn.Embedding   ∇E_i[v] = Σ_{t: id_it = v} g_it (rows at ``padding_idx`` get nothing)

Padding needs no mask: with eager attention a padded position gets exactly zero softmax weight, so no
gradient reaches it (the tests compare padded batches with single examples). A module output of batch
size 1 that is broadcast over the batch (BERT's position embeddings, ``(1, T, d)``) is expanded to
``(B, T, d)`` first, so its gradient is per example too. The hooked forward runs with the parameters
detached: autograd computes no (wasted) summed parameter gradients, only the output gradients.

API: :func:`per_example_gradients` ``(B, P)`` (tests, small models) and :func:`per_example_dots`
``(M, B)``, the dots ``∇ℓ(z_i) · s_m`` with the rows of ``S (M, P)``, contracted layer by layer inside
the backward so that no ``(B, P)`` tensor exists. Memory of the contraction: one batch of activations
and output gradients, plus per Linear layer at most ``_BLOCK`` elements of per-example weight gradients
(rows of the batch are processed in blocks) and per Embedding at most ``_BLOCK`` gathered elements.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastif_core.engine.examples import Batch, to_device
from fastif_core.engine.objective import Objective
from fastif_core.errors import ConfigError

_BLOCK = 1 << 26  # elements (256 MiB of float32) of per-example weight gradients held at once per layer
# (a batch of 64 of MiniLM's 384 × 1536 layers fits in one block: one contraction with S per layer)

# (module, input a, output gradient g) -> {local parameter name: (B, *shape)}
GradFn = Callable[[nn.Module, Tensor, Tensor], dict[str, Tensor]]
# (module, input a, output gradient g, {local name: S (M, *shape)}) -> (M, B)
DotFn = Callable[[nn.Module, Tensor, Tensor, dict[str, Tensor]], Tensor]


def token_rows(x: Tensor) -> Tensor:
    """``(B, *, d)`` -> ``(B, T, d)`` with T the product of the middle dimensions (1 for ``(B, d)``)."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


def _even_step(n: int, most: int) -> int:
    """Rows per block: at most ``most`` (at least 1), in equal blocks (64 rows at most 56 -> 2 × 32, not
    56 + 8: a thin last block makes a matrix product that reads all of S for a few rows)."""
    most = max(1, most)
    return -(-n // -(-n // most))


# ------------------------------------------------------------------------------------------ nn.Linear
def _linear_grads(module: nn.Linear, a: Tensor, g: Tensor) -> dict[str, Tensor]:
    a, g = token_rows(a), token_rows(g)  # (B, T, in), (B, T, out)
    return {"weight": g.transpose(1, 2) @ a, "bias": g.sum(1)}  # (B, out, in), (B, out)


def _linear_dots(module: nn.Linear, a: Tensor, g: Tensor, s: dict[str, Tensor]) -> Tensor:
    """``Σ_t g_it · (S_m a_it)`` when ``T·M <= T + M`` (no ``(B, out, in)`` tensor, fewer flops), else
    ``∇W_i`` in row blocks contracted with ``S (M, out·in)`` by one matrix product per block."""
    a, g = token_rows(a), token_rows(g)  # (B, T, in), (B, T, out)
    out = g.new_zeros(next(iter(s.values())).shape[0], a.shape[0])  # (M, B)
    if "bias" in s:
        out += s["bias"] @ g.sum(1).T  # (M, out) @ (out, B)
    if "weight" not in s:
        return out
    w = s["weight"]  # (M, out, in)
    (m, n_out, n_in), t = w.shape, a.shape[1]
    if t * m <= t + m:
        return out + torch.einsum("mbto,bto->mb", torch.einsum("bti,moi->mbto", a, w), g)
    step = _even_step(a.shape[0], _BLOCK // (n_out * n_in))
    flat = w.reshape(m, n_out * n_in)  # (M, out·in)
    for lo in range(0, a.shape[0], step):
        grads = g[lo : lo + step].transpose(1, 2) @ a[lo : lo + step]  # (b, out, in)
        out[:, lo : lo + step] += flat @ grads.reshape(grads.shape[0], -1).T  # (M, b)
    return out


# --------------------------------------------------------------------------------------- nn.LayerNorm
def layer_norm_grads(module: nn.LayerNorm, a: Tensor, g: Tensor) -> dict[str, Tensor]:
    shape = tuple(module.normalized_shape)
    x_hat = F.layer_norm(a, shape, None, None, module.eps).reshape(a.shape[0], -1, *shape)  # (B, T, *shape)
    g = g.reshape(x_hat.shape)
    grads = {"weight": (g * x_hat).sum(1), "bias": g.sum(1)}  # (B, *shape) each
    return {k: v for k, v in grads.items() if getattr(module, k, None) is not None}


def _layer_norm_dots(module: nn.LayerNorm, a: Tensor, g: Tensor, s: dict[str, Tensor]) -> Tensor:
    grads = layer_norm_grads(module, a, g)
    return sum(s[k].flatten(1) @ grads[k].flatten(1).T for k in s)  # (M, B)


# --------------------------------------------------------------------------------------- nn.Embedding
def _embedding_rows(module: nn.Embedding, ids: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """Flat token ids ``(B, T)`` and output gradients ``(B, T, d)`` with the ``padding_idx`` rows zeroed."""
    ids, g = ids.reshape(ids.shape[0], -1), g.reshape(g.shape[0], -1, g.shape[-1])
    if module.padding_idx is not None:
        g = g * (ids != module.padding_idx).unsqueeze(-1).to(g.dtype)
    return ids, g


def _embedding_grads(module: nn.Embedding, ids: Tensor, g: Tensor) -> dict[str, Tensor]:
    ids, g = _embedding_rows(module, ids, g)  # (B, T), (B, T, d)
    b, v = ids.shape[0], module.num_embeddings
    rows = (ids + v * torch.arange(b, device=ids.device).unsqueeze(1)).reshape(-1)  # (B·T,) into (B·V)
    grads = g.new_zeros(b * v, g.shape[-1]).index_add_(0, rows, g.reshape(-1, g.shape[-1]))
    return {"weight": grads.view(b, v, -1)}  # (B, V, d)


def _embedding_dots(module: nn.Embedding, ids: Tensor, g: Tensor, s: dict[str, Tensor]) -> Tensor:
    """``Σ_t g_it · S_m[id_it]`` by gathering the used rows of S (in blocks of tests): no ``(B, V, d)``."""
    ids, g = _embedding_rows(module, ids, g)  # (B, T), (B, T, d)
    w = s["weight"]  # (M, V, d)
    step = max(1, _BLOCK // g.numel())
    parts = [torch.einsum("mbtd,btd->mb", w[lo : lo + step][:, ids], g) for lo in range(0, len(w), step)]
    return torch.cat(parts)  # (M, B)


RULES: dict[type[nn.Module], tuple[GradFn, DotFn]] = {
    nn.Linear: (_linear_grads, _linear_dots),
    nn.LayerNorm: (layer_norm_grads, _layer_norm_dots),
    nn.Embedding: (_embedding_grads, _embedding_dots),
}


# ------------------------------------------------------------------------------------ hooks, backward
Layer = tuple[
    nn.Module, dict[str, str]
]  # a module and its trainable parameters: local name -> objective name
OnGrad = Callable[[nn.Module, dict[str, str], Tensor, Tensor], None]  # (module, names, a, g)


def _check_module(name: str, module: nn.Module) -> None:
    if type(module) not in RULES:
        supported = ", ".join(t.__name__ for t in RULES)
        raise ConfigError(
            f"trainable parameter {name!r} belongs to a {type(module).__name__}: per-example gradients "
            f"support {supported}; freeze it or use method='jvp'"
        )
    if isinstance(module, nn.Embedding) and (module.max_norm is not None or module.scale_grad_by_freq):
        raise ConfigError(f"trainable parameter {name!r}: an Embedding with max_norm/scale_grad_by_freq")


def trainable_layers(objective: Objective) -> list[Layer]:
    """The modules owning the objective's parameters, checked: a supported type, no parameter shared.

    Raises:
        ConfigError: naming the first parameter whose module type has no per-example rule, or a
            parameter used by several modules (tied weights: its hooks would see only one use).
    """
    modules, params = dict(objective.model.named_modules()), dict(objective.model.named_parameters())
    uses: dict[int, int] = {}  # parameter -> number of distinct modules owning it (>1: tied weights)
    for module in modules.values():
        for p in module.parameters(recurse=False):
            uses[id(p)] = uses.get(id(p), 0) + 1
    layers: dict[str, dict[str, str]] = {}
    for name in objective.names:
        path, _, local = name.rpartition(".")
        _check_module(name, modules[path])
        if uses[id(params[name])] > 1:
            raise ConfigError(f"trainable parameter {name!r} is shared by several modules (tied weights)")
        layers.setdefault(path, {})[local] = name
    return [(modules[path], names) for path, names in layers.items()]


@contextmanager
def _hooked(layers: list[Layer], batch_size: int, on_grad: OnGrad) -> Iterator[list[Tensor]]:
    """Hooks calling ``on_grad(module, names, a, g)`` in the backward; yields the leaf outputs (roots)."""
    roots: list[Tensor] = []

    def hook(module: nn.Module, args: tuple, out: Tensor, names: dict[str, str]) -> Tensor:
        a = args[0].detach()
        if not out.requires_grad:  # parameters are detached: the lowest hooked outputs start the graph
            out = out.detach().requires_grad_()
            roots.append(out)
        if out.shape[0] == 1 and batch_size > 1:  # broadcast over the batch (position embeddings)
            a, out = a.expand(batch_size, *a.shape[1:]), out.expand(batch_size, *out.shape[1:])
        if out.shape[0] != batch_size or a.shape[0] != batch_size:
            raise ConfigError(f"a {type(module).__name__} saw batch size {out.shape[0]}, not {batch_size}")
        out.register_hook(lambda g: on_grad(module, names, a, g))
        return out

    handles = [m.register_forward_hook(lambda m, x, y, n=n: hook(m, x, y, n)) for m, n in layers]
    try:
        yield roots
    finally:
        for handle in handles:
            handle.remove()


def hooked_backward(
    objective: Objective, batch: Batch, on_grad: OnGrad, scalar: Callable[[Tensor], Tensor] | None = None
) -> None:
    """One forward and backward of ``Σ_i ℓ_i`` (eval mode, data term only), feeding ``on_grad``; with
    ``scalar`` of ``scalar(outputs (B, C))`` instead, which must be a sum of per-row terms."""
    layers = trainable_layers(objective)
    batch = to_device(batch, objective.device)
    with objective.evaluating(), torch.enable_grad():
        with _hooked(layers, len(batch["labels"]), on_grad) as roots:
            outputs = objective.outputs(objective.params, batch)
            loss = objective.loss(outputs, batch["labels"]).sum() if scalar is None else scalar(outputs)
        if roots and loss.requires_grad:
            torch.autograd.grad(loss, roots, allow_unused=True)


def regularizer_gradient(objective: Objective) -> Tensor:
    """``∇(wd·Σ_decayed θ²) = 2·wd·θ`` on decayed parameters, 0 elsewhere: ``(P,)``."""
    decayed, params = set(objective.decayed), objective.params
    return objective.flatten(
        {
            n: 2.0 * objective.weight_decay * p if n in decayed else torch.zeros_like(p)
            for n, p in params.items()
        }
    )


def per_example_gradients(objective: Objective, batch: Batch, include_l2: bool = False) -> Tensor:
    """``∇ℓ(z_i)`` (plus ``∇(wd·Σθ²)`` when ``include_l2``) for every row: ``(B, P)``, ``names`` order.

    Materialises ``(B, P)`` (and ``(B, V, d)`` per trainable embedding): for tests and small models.
    """
    b = len(batch["labels"])
    grads = {n: torch.zeros(b, *p.shape, dtype=p.dtype, device=p.device) for n, p in objective.params.items()}

    def on_grad(module: nn.Module, names: dict[str, str], a: Tensor, g: Tensor) -> None:
        for local, value in RULES[type(module)][0](module, a, g).items():
            if local in names:
                grads[names[local]] += value

    hooked_backward(objective, batch, on_grad)
    flat = torch.cat([grads[n].reshape(b, -1) for n in objective.names], dim=1)  # (B, P)
    return flat + regularizer_gradient(objective) if include_l2 else flat


def per_example_dots(objective: Objective, batch: Batch, s: Tensor) -> Tensor:
    """``∇ℓ(z_i) · s_m`` ``(M, B)`` for the rows of ``s (M, P)``: one backward, contracted per layer."""
    params = objective.params
    views = torch.split(s, [params[n].numel() for n in objective.names], dim=1)  # (M, P_n) each
    shaped = {n: v.reshape(len(s), *params[n].shape) for n, v in zip(objective.names, views, strict=True)}
    out = torch.zeros(len(s), len(batch["labels"]), dtype=s.dtype, device=s.device)

    def on_grad(module: nn.Module, names: dict[str, str], a: Tensor, g: Tensor) -> None:
        nonlocal out
        out = out + RULES[type(module)][1](module, a, g, {k: shaped[n] for k, n in names.items()})

    hooked_backward(objective, batch, on_grad)
    return out


def per_example_output_gradients(objective: Objective, batch: Batch, weights: Tensor, out: Tensor) -> Tensor:
    """``∇_θ (w_i · f_i(θ))`` of every row i into ``out (B, P)`` (``names`` order), ``w = weights (B, C)`` a
    fixed weighting of the model outputs ``f_i``: one batched backward, written in place (no other
    ``(B, P)`` tensor). With ``w_i`` a row of ``Q_i^{1/2}`` these are rows of the Gauss-Newton factor."""
    params = objective.params
    offsets, start = {}, 0
    for n in objective.names:
        offsets[n] = (start, start + params[n].numel())
        start += params[n].numel()
    out.zero_()
    w = weights.detach().to(objective.device, objective.dtype)

    def on_grad(module: nn.Module, names: dict[str, str], a: Tensor, g: Tensor) -> None:
        for local, value in RULES[type(module)][0](module, a, g).items():
            if local in names:
                lo, hi = offsets[names[local]]
                out[:, lo:hi] += value.reshape(value.shape[0], -1)

    hooked_backward(objective, batch, on_grad, scalar=lambda outputs: (outputs * w).sum())
    return out
