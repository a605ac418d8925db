"""Shared test settings: reproducible hypothesis runs, and a helper to skip CUDA tests without a GPU."""
import pytest
import torch
from hypothesis import HealthCheck, settings

# Derandomized so CI runs the same examples every time; no example database written into the checkout.
settings.register_profile(
    "flamingo",
    derandomize=True,
    deadline=None,
    max_examples=40,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("flamingo")

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none is visible here")
