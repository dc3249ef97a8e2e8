"""The discriminator's half-precision blocks on CPU: bf16 only where the CPU has bf16 kernels.

On a CPU without them (AVX2 only) bf16 is emulated and the tiny D's step was 17x slower, so
there the blocks run in float32 and give exactly the float32 discriminator's logits."""

from __future__ import annotations

import pytest
import torch

import cgsgan.discriminator as discriminator
from cgsgan import camera, config
from cgsgan.discriminator import Discriminator, half_dtype


def pair() -> tuple[Discriminator, Discriminator]:
    """Two discriminators with the same weights: 4 half-precision blocks, and none."""
    cfg = config.tiny().model.discriminator
    cfg.num_fp16_res = 4
    torch.manual_seed(0)
    mixed = Discriminator(cfg, 32)
    cfg.num_fp16_res = 0
    full = Discriminator(cfg, 32)
    full.load_state_dict(mixed.state_dict())
    assert any(b.half for b in mixed.blocks) and not any(b.half for b in full.blocks)
    return mixed, full


def block_input_dtypes(D: Discriminator, image: torch.Tensor, label: torch.Tensor) -> list[torch.dtype]:
    seen = []
    hooks = [b.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype)) for b in D.blocks]
    D(image, label)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("native", [False, True], ids=["avx2-only", "bf16-kernels"])
def test_half_blocks_are_bf16_only_on_a_cpu_with_bf16_kernels(monkeypatch, native):
    monkeypatch.setattr(discriminator, "cpu_has_bf16_kernels", lambda: native)
    mixed, full = pair()
    torch.manual_seed(1)
    image = torch.rand(4, 3, 32, 32) * 2 - 1
    label = camera.frontal_label(4)
    dtypes = block_input_dtypes(mixed, image, label)
    halves = [d for d, b in zip(dtypes, mixed.blocks) if b.half]
    assert halves and all(d == (torch.bfloat16 if native else torch.float32) for d in halves), dtypes
    if native:
        assert not torch.equal(mixed(image, label), full(image, label))  # bf16 rounds
    else:
        assert torch.equal(mixed(image, label), full(image, label))


def test_cuda_keeps_the_references_fp16():
    assert half_dtype(torch.device("cuda")) is torch.float16
