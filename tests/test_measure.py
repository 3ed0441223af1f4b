"""``fastif_core.measure``: phase seconds and peak RSS from the kernel's high-water mark, sizes on disk."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from fastif_core.measure import PhaseClock, measured, rss_mb, size_mb

LINUX = sys.platform.startswith("linux")


@pytest.mark.skipif(not LINUX, reason="the per-phase high-water mark is Linux's /proc/self/clear_refs")
def test_a_phase_sees_its_own_peak_not_an_earlier_one():
    clock = PhaseClock()
    assert clock.source == "vmhwm"
    with clock.phase("big"):
        block = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
        del block
    with clock.phase("small"):  # after the big phase: a reset high-water mark, so no 200 MiB here
        block = np.ones(20 * 2**20 // 8)
        del block
    big, small = clock.phases["big"], clock.phases["small"]
    assert big["peak_growth_mb"] >= 190 and small["peak_growth_mb"] < 100
    assert big["peak_rss_mb"] >= rss_mb() + 150  # the array is gone again


@pytest.mark.skipif(not LINUX, reason="the per-phase high-water mark is Linux's /proc/self/clear_refs")
def test_an_outer_phase_keeps_the_peak_of_an_inner_one():
    clock = PhaseClock()
    with clock.phase("outer"):
        with clock.phase("inner"):
            block = np.ones(100 * 2**20 // 8)
            del block
        with clock.phase("inner"):  # a repeated name adds the seconds and keeps the larger peak
            pass
    assert list(clock.as_dict()) == ["inner", "outer"]
    assert clock.phases["outer"]["peak_growth_mb"] >= 90 and clock.phases["inner"]["peak_growth_mb"] >= 90


def test_measured_returns_the_value_and_the_phase():
    value, phase = measured(lambda: 41 + 1)
    assert value == 42 and set(phase) == {"seconds", "peak_rss_mb", "peak_growth_mb"}


def test_size_of_a_file_a_tree_and_nothing(tmp_path: Path):
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "a").write_bytes(b"x" * 2**20)
    (tmp_path / "d" / "e" / "b").write_bytes(b"x" * 2**19)
    assert size_mb(tmp_path / "d" / "a") == 1.0 and size_mb(tmp_path / "d") == 1.5
    assert size_mb(tmp_path / "missing") is None
