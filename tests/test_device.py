"""Device strings resolve to torch devices, with clear errors for devices this machine lacks."""

from __future__ import annotations

import pytest
import torch

from fastif_core.device import cuda_available, cuda_count, describe_devices, list_devices, resolve_device
from fastif_core.errors import ConfigError


def test_cpu_and_auto_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device(" AUTO ") == torch.device("cuda:0" if cuda_available() else "cpu")


def test_listed_devices_match_torch():
    assert list_devices() == ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    assert set(describe_devices()) == set(list_devices())
    assert cuda_available() == (cuda_count() > 0) == torch.cuda.is_available()


def test_unknown_or_missing_devices_list_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"device='tpu' is invalid: allowed \['auto', 'cpu'"):
        resolve_device("tpu")
    with pytest.raises(ConfigError, match=r"device='cuda:99' is not available"):
        resolve_device("cuda:99")


@pytest.mark.gpu
def test_cuda_strings_resolve_on_a_gpu_machine():
    assert resolve_device("cuda") == torch.device("cuda:0")
    assert resolve_device(f"cuda:{cuda_count() - 1}").index == cuda_count() - 1
    assert "GiB" in describe_devices()["cuda:0"]
