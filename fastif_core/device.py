"""Device strings: ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'cuda:N'`` resolved to a ``torch.device``.

Every CUDA probe is guarded, so a CPU-only build, a missing driver or a broken runtime all read as
"no GPU" instead of an exception deep inside a pipeline.
"""

from __future__ import annotations

import torch

from fastif_core.errors import ConfigError

DeviceLike = str | torch.device


def cuda_available() -> bool:
    """True when CUDA can actually be used (never raises)."""
    try:
        return bool(torch.cuda.is_available()) and torch.cuda.device_count() > 0
    except Exception:  # noqa: BLE001 - a broken driver must read as "no GPU"
        return False


def cuda_count() -> int:
    """Number of visible CUDA devices (0 without CUDA)."""
    return torch.cuda.device_count() if cuda_available() else 0


def list_devices() -> list[str]:
    """Device strings usable here, e.g. ``['cpu', 'cuda:0', 'cuda:1']``."""
    return ["cpu"] + [f"cuda:{i}" for i in range(cuda_count())]


def describe_devices() -> dict[str, str]:
    """Device string -> human-readable name (GPU model and memory), for the CLI and the UI."""
    names = {"cpu": "CPU"}
    for i in range(cuda_count()):
        props = torch.cuda.get_device_properties(i)
        names[f"cuda:{i}"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    return names


def resolve_device(spec: DeviceLike = "auto") -> torch.device:
    """Turn a device string into a ``torch.device``; ``'auto'`` picks ``cuda:0`` when present, else CPU.

    Raises:
        ConfigError: unknown string, or a CUDA device that is not visible (the message lists the allowed ones).
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = spec.strip().lower()
    if text == "auto":
        return torch.device("cuda:0" if cuda_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    allowed = ["auto", *list_devices()]
    if text == "cuda":
        text = "cuda:0"
    index = text.removeprefix("cuda:")
    if not text.startswith("cuda:") or not index.isdigit():
        raise ConfigError(f"device={spec!r} is invalid: allowed {allowed}")
    if int(index) >= cuda_count():
        raise ConfigError(f"device={spec!r} is not available on this machine: allowed {allowed}")
    return torch.device(text)
