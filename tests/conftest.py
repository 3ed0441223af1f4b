"""Markers: ``gpu`` skips without CUDA; ``browser`` needs /usr/bin/chromium; tests that read the real
MNLI files in ../shared/data skip with a reason that names the missing path."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from db_backends import BACKENDS, fresh_url  # noqa: E402
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


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path) -> str:
    """A fresh empty database on each backend (SQLite always, PostgreSQL with FASTIF_TEST_PG_URL)."""
    return fresh_url(request.param, tmp_path)


@pytest.fixture
def store(db_url):
    """A Store opened (and migrated) on ``db_url``."""
    from fastif_core.store import Store

    with Store.open(url=db_url) as st:
        yield st


@pytest.fixture
def mnli_dev_path() -> Path:
    if not MNLI_DEV.exists():
        pytest.skip(f"real MNLI data not found at {MNLI_DEV}")
    return MNLI_DEV


@pytest.fixture(scope="session")
def tiny_workspace_template(tmp_path_factory) -> Path:
    """One prepared tiny workspace per test session (tiny BERT, ~60 demo examples). Do not write to it:
    tests that enqueue jobs or store results use the ``tiny_workspace`` copy."""
    from factories import make_tiny_workspace

    return make_tiny_workspace(tmp_path_factory.mktemp("ws") / "tiny")


@pytest.fixture
def tiny_workspace(tiny_workspace_template: Path, tmp_path: Path) -> Path:
    """A private copy of the prepared tiny workspace (its own SQLite file, model and index)."""
    import shutil

    dst = tmp_path / "ws"
    shutil.copytree(tiny_workspace_template, dst)
    return dst


@pytest.fixture(scope="session", autouse=True)
def _no_stray_workers(tmp_path_factory):
    """No test may start a background worker in the repository's default workspace: point the default
    workspace at a temporary directory and turn the dashboard's worker auto-start off (tests that check
    auto-start turn it on with monkeypatch and stop the worker they started)."""
    import os

    saved = {k: os.environ.get(k) for k in ("FASTIF_WORKSPACE", "FASTIF_AUTOSTART_WORKER")}
    os.environ["FASTIF_WORKSPACE"] = str(tmp_path_factory.mktemp("default-workspace") / "demo")
    os.environ["FASTIF_AUTOSTART_WORKER"] = "0"
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
