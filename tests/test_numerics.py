"""Rows that see no media are exactly zero and never NaN: fp32, fp16, bf16; CPU, and CUDA when present."""
import pytest
import torch

import flamingo_lite as fl
from flamingo_lite.masks import rows_without_media

from conftest import requires_cuda
from helpers import PATHS, force_path

DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LOCATIONS = {
    "text before the first media": [[0, 0, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0, 1]],
    "no markers at all": [[0] * 7, [0] * 7],
    "a marker at every token": [[1, 1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0]],
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("immediate", [True, False])
@pytest.mark.parametrize("pattern", list(LOCATIONS))
@pytest.mark.parametrize("path", PATHS)
def test_rows_without_media_are_exactly_zero(device, dtype, immediate, pattern, path):
    torch.manual_seed(0)
    module = fl.MaskedCrossAttention(dim=32, dim_head=8, heads=4, only_attend_immediate_media=immediate)
    force_path(module, path)
    module = module.to(device=device, dtype=dtype)
    x = torch.randn(2, 7, 32, device=device, dtype=dtype, requires_grad=True)  # (b, n, d)
    media = torch.randn(2, 2, 5, 32, device=device, dtype=dtype, requires_grad=True)  # (b, t, m, d)
    locations = torch.tensor(LOCATIONS[pattern], dtype=torch.bool, device=device)  # (b, n)

    out = module(x, media, locations)  # (b, n, d)
    blind = rows_without_media(locations)  # (b, n)
    assert out.dtype == dtype
    assert not torch.isnan(out).any()
    assert torch.equal(out[blind], torch.zeros_like(out[blind]))
    assert (out[~blind].abs().amax(dim=-1) > 0).all()

    out.float().square().sum().backward()
    for grad in (x.grad, media.grad, *(p.grad for p in module.parameters())):
        assert grad is not None and not torch.isnan(grad).any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gated_block_is_the_identity_at_init_and_never_nan(device, dtype):
    torch.manual_seed(0)
    block = fl.GatedCrossAttentionBlock(dim=32, dim_head=8, heads=4).to(device=device, dtype=dtype)
    x = torch.randn(2, 7, 32, device=device, dtype=dtype)
    media = torch.randn(2, 2, 5, 32, device=device, dtype=dtype)
    locations = torch.tensor(LOCATIONS["text before the first media"], dtype=torch.bool, device=device)
    assert torch.equal(block(x, media, locations), x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_resampler_runs_in_every_dtype(device, dtype):
    torch.manual_seed(0)
    resampler = fl.PerceiverResampler(dim=32, depth=2, dim_head=8, heads=4, num_latents=6).to(device=device, dtype=dtype)
    out = resampler(torch.randn(2, 3, 10, 32, device=device, dtype=dtype))
    assert out.shape == (2, 3, 6, 32) and out.dtype == dtype
    assert torch.isfinite(out).all()


@requires_cuda
@pytest.mark.parametrize("immediate", [True, False])
def test_cuda_matches_cpu(immediate):
    torch.manual_seed(0)
    module = fl.GatedCrossAttentionBlock(dim=32, dim_head=8, heads=4, only_attend_immediate_media=immediate)
    with torch.no_grad():
        module.attn_gate.fill_(0.7)
        module.ff_gate.fill_(0.3)
    x, media = torch.randn(2, 7, 32), torch.randn(2, 2, 5, 32)
    locations = torch.tensor(LOCATIONS["text before the first media"], dtype=torch.bool)
    expected = module(x, media, locations)
    got = module.cuda()(x.cuda(), media.cuda(), locations.cuda()).cpu()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
