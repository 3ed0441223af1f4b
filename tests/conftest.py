"""Markers: ``gpu`` skips without CUDA; ``browser`` needs /usr/bin/chromium; tests that read the real
MNLI files in ../shared/data skip with a reason that names the missing path."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from factories import MNLI_DEV  # noqa: E402


def pytest_collection_modifyitems(config, items):
    import torch

    no_cuda = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    no_chromium = pytest.mark.skip(reason="needs Debian's chromium at /usr/bin/chromium")
    has_chromium = Path("/usr/bin/chromium").exists() or shutil.which("chromium") is not None
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)
        if "browser" in item.keywords and not has_chromium:
            item.add_marker(no_chromium)


@pytest.fixture
def mnli_dev_path() -> Path:
    if not MNLI_DEV.exists():
        pytest.skip(f"real MNLI data not found at {MNLI_DEV}")
    return MNLI_DEV
