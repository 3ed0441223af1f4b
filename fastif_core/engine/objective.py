"""The loss whose gradients and Hessian define influence: model + per-example loss + L2 term.

For a training example z_i the loss is::

    L_i(θ) = ℓ(f_θ(x_i), y_i) + wd · Σ_{p decayed} ‖θ_p‖²

over the *trainable* parameters θ only (``requires_grad=True``; frozen embeddings and encoder layers
are constants). "Decayed" excludes biases and LayerNorm weights, as the original FastIF code
(``no_decay = ["bias", "LayerNorm.weight"]``). AdamW's decay is decoupled, so the L2 term is not
literally the training loss: it is the stated convention that keeps the Hessian well-conditioned. It
always enters the curvature (the Hessian of the batch mean ``mean_i L_i``); whether it enters the test
and candidate gradients is ``InfluenceConfig.gradient_l2`` (default: not, see :mod:`fastif_core.engine.influence`).

API: :class:`Objective` (``params``, ``per_example_loss(params, batch) -> (B,)``,
``batch_loss(params, batch) -> ()``, ``flatten``, ``unflatten``, ``num_params``, ``grad``,
``evaluating()``), :func:`classifier_objective` for Hugging Face sequence classifiers (batch dicts
with ``input_ids``/``attention_mask``/``token_type_ids``/``labels``) and :func:`tensor_forward` for
models on ``TensorExamples`` batches (``x``, ``labels``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from fastif_core.engine.examples import Batch, to_device
from fastif_core.errors import ConfigError

Params = dict[str, Tensor]
ForwardFn = Callable[[nn.Module, Batch], Tensor]  # (model, batch) -> outputs, e.g. logits (B, C)
LossFn = Callable[[Tensor, Tensor], Tensor]  # (outputs, labels (B,)) -> per-example loss (B,)

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "layernorm.weight")  # name substrings


def hf_forward(model: nn.Module, batch: Batch) -> Tensor:
    """Logits ``(B, C)`` of a Hugging Face sequence classifier on a batch dict (labels are not passed)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return model(**inputs).logits


def tensor_forward(model: nn.Module, batch: Batch) -> Tensor:
    """Outputs of a plain module on a ``TensorExamples`` batch: ``model(batch["x"])``."""
    return model(batch["x"])


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-example cross-entropy ``(B,)`` from logits ``(B, C)`` and integer labels ``(B,)``."""
    return F.cross_entropy(logits, labels, reduction="none")


def binary_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-example logistic loss ``(B,)`` from one logit per example ``(B, 1)`` and 0/1 labels ``(B,)``."""
    z = logits[:, 0]  # (B,)
    return F.softplus(z) - labels.to(z.dtype) * z  # = BCE-with-logits, without its slow multi-thread kernel


def default_decay(name: str, module: nn.Module | None) -> bool:
    """Whether a parameter gets the L2 term: not a bias, not a LayerNorm weight (FastIF's rule)."""
    if isinstance(module, nn.LayerNorm):
        return False
    return not any(nd in name for nd in NO_DECAY)


class _Apply(nn.Module):
    """Wraps ``forward(model, batch)`` as a module so ``functional_call`` can swap the parameters."""

    def __init__(self, model: nn.Module, forward: ForwardFn) -> None:
        super().__init__()
        self.model = model
        self._forward = forward

    def forward(self, batch: Batch) -> Tensor:
        return self._forward(self.model, batch)


class Objective:
    """A model, a per-example loss and the L2 term over the decayed trainable parameters.

    Args:
        model: any ``nn.Module``; parameters with ``requires_grad=False`` are held fixed.
        forward: ``(model, batch) -> outputs``; default :func:`hf_forward`.
        loss: ``(outputs, labels) -> (B,)``; default :func:`cross_entropy`.
        weight_decay: ``wd`` of the ``wd · Σθ²`` term (>= 0).
        decay: ``(name, owning module) -> bool`` choosing decayed parameters; default FastIF's rule.
    """

    def __init__(
        self,
        model: nn.Module,
        forward: ForwardFn = hf_forward,
        loss: LossFn = cross_entropy,
        weight_decay: float = 0.0,
        decay: Callable[[str, nn.Module | None], bool] = default_decay,
    ) -> None:
        if weight_decay < 0:
            raise ConfigError(f"weight_decay={weight_decay!r} is invalid: allowed a number >= 0")
        owners = {
            f"{m}.{n}" if m else n: mod
            for m, mod in model.named_modules()
            for n, _ in mod.named_parameters(recurse=False)
        }
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ConfigError("the model has no trainable parameters: unfreeze at least the classifier head")
        self.model = model
        self.loss = loss
        self.weight_decay = float(weight_decay)
        self.names = [n for n, _ in named]
        self._refs = dict(named)
        self.decayed = [n for n in self.names if decay(n, owners.get(n))]
        self._apply = _Apply(model, forward)
        self._keys = [f"model.{n}" for n in self.names]
        self._shapes = [p.shape for _, p in named]
        self._numels = [p.numel() for _, p in named]

    @property
    def params(self) -> Params:
        """The trainable parameters, detached (same storage), read from the model now: a later
        ``model.to(device)`` or in-place weight update is seen."""
        return {n: p.detach() for n, p in self._refs.items()}

    @property
    def num_params(self) -> int:
        """Number of trainable scalars P (the length of flat vectors)."""
        return sum(self._numels)

    @property
    def device(self) -> torch.device:
        return next(iter(self._refs.values())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self._refs.values())).dtype

    def outputs(self, params: Params, batch: Batch) -> Tensor:
        """Model outputs with the trainable parameters replaced by ``params``."""
        swapped = {k: params[n] for k, n in zip(self._keys, self.names, strict=True)}
        return functional_call(self._apply, swapped, (batch,), strict=False)

    def regularizer(self, params: Params) -> Tensor:
        """``wd · Σ_{decayed} ‖θ‖²`` as a 0-d tensor."""
        if self.weight_decay == 0.0 or not self.decayed:
            return torch.zeros((), dtype=self.dtype, device=self.device)
        return self.weight_decay * sum(params[n].pow(2).sum() for n in self.decayed)

    def regularizer_hvp(self, vs: Params) -> Params:
        """Hessian of the L2 term times ``vs``: ``2·wd·v`` on decayed parameters, 0 elsewhere (analytic)."""
        decayed = set(self.decayed)
        return {
            n: 2.0 * self.weight_decay * v if n in decayed else torch.zeros_like(v) for n, v in vs.items()
        }

    def data_loss(self, params: Params, batch: Batch) -> Tensor:
        """The per-example loss ``ℓ_i`` without the L2 term: ``(B,)``."""
        return self.loss(self.outputs(params, batch), batch["labels"])

    def per_example_loss(self, params: Params, batch: Batch) -> Tensor:
        """``L_i = ℓ_i + wd·Σθ²`` for every row of the batch: ``(B,)``."""
        return self.data_loss(params, batch) + self.regularizer(params)

    def batch_loss(self, params: Params, batch: Batch) -> Tensor:
        """Mean of the per-example losses (the function whose Hessian LiSSA inverts): ``()``."""
        return self.per_example_loss(params, batch).mean()

    def flatten(self, tensors: Params) -> Tensor:
        """Concatenate a name -> tensor dict (in ``names`` order) into one flat vector ``(P,)``."""
        return torch.cat([tensors[n].reshape(-1) for n in self.names])

    def unflatten(self, flat: Tensor) -> Params:
        """Split a flat vector ``(P,)`` into a name -> tensor dict of views shaped like ``params``."""
        if flat.shape != (self.num_params,):
            raise ConfigError(f"flat vector has shape {tuple(flat.shape)}; expected ({self.num_params},)")
        chunks = torch.split(flat, self._numels)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self._shapes, strict=True)}

    def grad(self, batch: Batch, *, include_l2: bool = True) -> Tensor:
        """Flat gradient ``(P,)`` of the batch-mean loss at the current parameters (one backward); without
        ``include_l2`` of the data loss alone (the test gradient of the influence definition)."""
        leaves = {n: p.detach().requires_grad_() for n, p in self.params.items()}
        batch = to_device(batch, self.device)
        loss = self.batch_loss(leaves, batch) if include_l2 else self.data_loss(leaves, batch).mean()
        grads = torch.autograd.grad(loss, [leaves[n] for n in self.names])
        return torch.cat([g.reshape(-1) for g in grads])

    @contextmanager
    def evaluating(self) -> Iterator[Objective]:
        """Run the model in eval mode (no dropout) inside the block; restore every module's mode after."""
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            yield self
        finally:
            for module, training in modes:
                module.training = training


def classifier_objective(model: nn.Module, weight_decay: float) -> Objective:
    """Objective of a Hugging Face sequence classifier: per-example cross-entropy + the L2 term."""
    return Objective(model, forward=hf_forward, loss=cross_entropy, weight_decay=weight_decay)


def objective_device(objective: Objective, device: torch.device | str | None) -> torch.device:
    """The device computations run on: the objective's; a different explicit ``device`` is an error."""
    here = objective.device
    if device is None:
        return here
    want = torch.device(device)
    if want.type == "cuda" and want.index is None and torch.cuda.is_available():
        want = torch.device("cuda", torch.cuda.current_device())
    if want != here:
        raise ConfigError(
            f"device={str(want)!r} but the model's trainable parameters are on {here}: move the model first"
        )
    return here
