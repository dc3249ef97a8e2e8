"""The discriminator's FIR resampling against a direct upfirdn2d (pad, filter, keep every down-th)."""

import pytest
import torch
import torch.nn.functional as F

from cgsgan.layers import fir, fir_filter


def upfirdn2d(x: torch.Tensor, taps: list[float], pad: int, down: int) -> torch.Tensor:
    """StyleGAN2's upfirdn2d (up=1) written as loops over the taps: zero padding, the normalised
    outer-product filter, every down-th output pixel."""
    f = torch.tensor(taps, dtype=x.dtype)
    f = torch.outer(f, f) / f.sum() ** 2
    k = f.shape[0]
    xp = F.pad(x, [pad] * 4)
    H, W = xp.shape[-2] - k + 1, xp.shape[-1] - k + 1
    out = sum(f[a, b] * xp[..., a : a + H, b : b + W] for a in range(k) for b in range(k))
    return out[..., ::down, ::down]


@pytest.mark.parametrize("pad,down,size", [(1, 2, 16), (2, 1, 16), (1, 2, 15), (2, 1, 9)])
def test_fir_is_upfirdn2d(pad, down, size):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(fir(x, fir_filter().double(), pad, down), upfirdn2d(x, [1, 3, 3, 1], pad, down))


@pytest.mark.parametrize("size", [16, 15])
def test_bf16_down_sampling_is_the_same_filter_with_its_gradient(size):
    # On CPU the half-precision blocks take another route to the same [1,3,3,1] stride-2 filter.
    x = torch.randn(4, 8, size, size, generator=torch.Generator().manual_seed(1))
    x = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    ref_in = x.detach().double().requires_grad_(True)
    y = fir(x, fir_filter(), pad=1, down=2)
    ref = upfirdn2d(ref_in, [1, 3, 3, 1], pad=1, down=2)
    assert y.dtype == torch.bfloat16 and y.shape == ref.shape

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:  # bf16 rounds each value by up to 2^-9
        return ((a.double() - b).norm() / b.norm()).item()

    assert rel(y, ref) < 4e-3  # measured 0.002: two bf16 roundings
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y.backward(g.to(torch.bfloat16))
    ref.backward(g)
    assert rel(x.grad, ref_in.grad) < 4e-3


def test_bf16_down_sampling_refuses_another_filter():
    x = torch.randn(1, 2, 8, 8).to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"\[1,3,3,1\]"):
        fir(x, fir_filter((1.0, 2.0, 1.0)), pad=1, down=2)
