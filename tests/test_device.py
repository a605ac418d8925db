"""The one device helper: CPU by default, CUDA when present and asked for, by argument or FLAMINGO_DEVICE."""
import pytest
import torch

from flamingo_lite import get_device


def test_cpu_is_the_default(monkeypatch):
    monkeypatch.delenv("FLAMINGO_DEVICE", raising=False)
    assert get_device() == torch.device("cpu")


def test_environment_variable_and_argument(monkeypatch):
    monkeypatch.setenv("FLAMINGO_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")
    monkeypatch.setenv("FLAMINGO_DEVICE", "auto")
    assert get_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("FLAMINGO_DEVICE", "tpu")
    with pytest.raises(ValueError, match="FLAMINGO_DEVICE"):
        get_device()
    assert get_device("cpu") == torch.device("cpu")  # the argument wins over the environment


def test_cuda_without_a_gpu_falls_back_with_a_warning(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="CUDA is not available"):
        assert get_device("cuda") == torch.device("cpu")


def test_bad_device_arguments():
    with pytest.raises(ValueError, match="device"):
        get_device("gpu")
    with pytest.raises(TypeError, match="device"):
        get_device(0)
