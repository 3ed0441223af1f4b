"""Examples as tensors: the one protocol the engine, the trainer and the benchmarks share.

``Examples`` is anything with ``__len__``, ``collate(indices)`` (a batch dict of tensors for those
rows, in that order), ``lengths()`` (a cost proxy per row, for padding-aware batching). Two
implementations: :class:`EncodedExamples` (tokenised premise/hypothesis pairs, padded per batch) and
:class:`TensorExamples` (fixed-size features, e.g. for a logistic-regression model).

Batch dicts for transformers hold ``input_ids``, ``attention_mask``, optional ``token_type_ids``
(all ``(B, T)`` long) and ``labels`` ``(B,)`` long; for tensor examples ``x`` ``(B, d)`` and ``labels``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

Batch = dict[str, Tensor]


class Examples(Protocol):
    def __len__(self) -> int: ...

    def collate(self, indices: Sequence[int]) -> Batch: ...

    def lengths(self) -> Tensor: ...


@dataclass
class EncodedExamples:
    """Tokenised sequence pairs, unpadded; ``collate`` pads to the longest row of the batch."""

    input_ids: list[list[int]]
    labels: Tensor  # (N,) long
    pad_id: int = 0
    token_type_ids: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> Tensor:
        return torch.tensor([len(ids) for ids in self.input_ids], dtype=torch.long)

    def collate(self, indices: Sequence[int]) -> Batch:
        rows = [int(i) for i in indices]
        width = max(len(self.input_ids[i]) for i in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        types = torch.zeros((len(rows), width), dtype=torch.long) if self.token_type_ids is not None else None
        for r, i in enumerate(rows):
            n = len(self.input_ids[i])
            ids[r, :n] = torch.tensor(self.input_ids[i], dtype=torch.long)
            mask[r, :n] = 1
            if types is not None:
                types[r, :n] = torch.tensor(self.token_type_ids[i], dtype=torch.long)  # type: ignore[index]
        batch: Batch = {"input_ids": ids, "attention_mask": mask, "labels": self.labels[rows]}
        if types is not None:
            batch["token_type_ids"] = types
        return batch

    def subset(self, indices: Sequence[int]) -> EncodedExamples:
        rows = [int(i) for i in indices]
        types = [self.token_type_ids[i] for i in rows] if self.token_type_ids is not None else None
        return EncodedExamples([self.input_ids[i] for i in rows], self.labels[rows], self.pad_id, types)


@dataclass
class TensorExamples:
    """Fixed-size feature rows ``x`` (N, d) with integer labels (N,)."""

    x: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def lengths(self) -> Tensor:
        return torch.ones(len(self), dtype=torch.long)

    def collate(self, indices: Sequence[int]) -> Batch:
        rows = torch.as_tensor([int(i) for i in indices], dtype=torch.long)
        return {"x": self.x[rows], "labels": self.labels[rows]}

    def subset(self, indices: Sequence[int]) -> TensorExamples:
        rows = torch.as_tensor([int(i) for i in indices], dtype=torch.long)
        return TensorExamples(self.x[rows], self.labels[rows])


def to_device(batch: Batch, device: torch.device | str) -> Batch:
    """Move every tensor of a batch to ``device`` (non-blocking where possible)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def sample_indices(n: int, batch_size: int, generator: torch.Generator) -> list[int]:
    """``batch_size`` distinct row indices drawn uniformly (with replacement if the set is smaller).

    O(batch_size) per call, not O(n): a draw with replacement, duplicates redrawn (a permutation only
    when the batch is a large share of the set), so a LiSSA step at B=1 costs nothing to sample.
    """
    if batch_size > n:
        return torch.randint(n, (batch_size,), generator=generator).tolist()
    if 4 * batch_size > n:
        return torch.randperm(n, generator=generator)[:batch_size].tolist()
    picked: list[int] = []
    seen: set[int] = set()
    while len(picked) < batch_size:
        for i in torch.randint(n, (batch_size - len(picked),), generator=generator).tolist():
            if i not in seen:
                seen.add(i)
                picked.append(i)
    return picked


def length_sorted_chunks(indices: Sequence[int], lengths: Tensor, batch_size: int) -> Iterator[list[int]]:
    """Split ``indices`` into batches of similar length (longest first) so padding is minimal.

    Yields lists of the original indices; callers scatter results back by these indices.
    """
    idx = torch.as_tensor([int(i) for i in indices], dtype=torch.long)
    order = torch.argsort(lengths[idx], descending=True, stable=True)
    ordered = idx[order].tolist()
    for start in range(0, len(ordered), batch_size):
        yield ordered[start : start + batch_size]
