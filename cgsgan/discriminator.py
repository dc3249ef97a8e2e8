"""Camera-aware residual discriminator (StyleGAN2 "resnet" architecture, as in the reference).

    image [N, 3, R, R] -> fromRGB -> residual blocks R ... 8 (each halves the resolution with
    the [1,3,3,1] FIR filter) -> minibatch std -> conv -> fc -> out [N, cmap_dim]
    label [N, 25] -> camera mapping (embed + 8 layers, lr x 0.01) -> cmap [N, cmap_dim]
    logit = <out, cmap> / sqrt(cmap_dim)

The camera enters only here, at feature level. Mode "d_none" drops the camera (out has one
channel and is the logit): the known collapse, kept as a baseline.

The reference builds a second block at 8x8 ("b8_pose", 4,981,760 parameters at 512) whose output
is computed and discarded; it is left out, so this model has the reference's 31,359,552 live
parameters at 512 (36,341,312 with the dead block).

Mixed precision as in the reference (`--d_num_fp16_res 4`): the num_fp16_res highest-resolution
blocks run in half precision (fp16 on CUDA as the reference; bf16 on a CPU whose oneDNN has bf16
kernels, i.e. AVX-512 or AMX, and no fast fp16 ones), every conv output then clamped to +-256
(conv_clamp); the epilogue and the camera mapping stay fp32. num_fp16_res=0 runs everything in fp32,
and so does a CPU without bf16 kernels (AVX2 only, as most laptops): there bf16 is emulated, and the
tiny model's D forward and backward took 11.6 s in bf16 against 0.67 s in fp32 (batch 32, 1 thread).

On CPU the convolutions run in channels-last layout (oneDNN's fast path: the same arithmetic,
2-2.5x faster here).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn

from cgsgan.camera import LABEL_DIM
from cgsgan.config import DiscriminatorConfig
from cgsgan.layers import Conv2dLayer, EqualLinear, MappingNetwork

CONV_CLAMP = 256.0  # the reference clamps conv outputs whenever D uses half precision


def minibatch_std(x: torch.Tensor, group: int, channels: int) -> torch.Tensor:
    """StyleGAN2's MinibatchStdLayer: x [N, C, H, W] -> [N, C + channels, H, W].

    Groups are STRIDED: with n = N / G groups, sample i belongs to group i mod n. A batch laid
    out head-major ([heads, views] flattened) therefore gets, in every group, one view of
    G distinct heads as long as G divides the number of heads (`layout.check_batch` makes every chunk a
    multiple of the group).
    """
    N, C, H, W = x.shape
    G = min(group, N)
    if N % G:
        raise ValueError(f"minibatch-std group size {G} does not divide the batch of {N}")
    y = x.reshape(G, -1, channels, C // channels, H, W)  # [G, n, F, c, H, W]
    y = (y - y.mean(dim=0)).square().mean(dim=0)  # variance over the group
    y = (y + 1e-8).sqrt().mean(dim=(2, 3, 4))  # [n, F]
    y = y.reshape(-1, channels, 1, 1).repeat(G, 1, H, W)  # [N, F, H, W]
    return torch.cat([x, y], dim=1)


class ResidualBlock(nn.Module):
    """x -> conv0 3x3 -> conv1 3x3 down 2, plus skip 1x1 down 2; both halves scaled by sqrt(1/2)."""

    def __init__(self, tmp_channels: int, out_channels: int, clamp: float | None, half: bool) -> None:
        super().__init__()
        self.half = half  # runs in half precision
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", clamp=clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2, gain=math.sqrt(0.5),
                                 clamp=clamp)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2, gain=math.sqrt(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.conv1(self.conv0(x))


@functools.cache
def cpu_has_bf16_kernels() -> bool:
    """Whether this CPU runs oneDNN's bf16 convolutions natively (AVX-512 / AMX), not emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without the query: only the flag's own check
        return torch.cpu._is_avx512_bf16_supported()


def half_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype of D's half-precision blocks on `device`; None where they run in full precision."""
    if device.type != "cpu":
        return torch.float16
    return torch.bfloat16 if cpu_has_bf16_kernels() else None


class Discriminator(nn.Module):
    def __init__(self, cfg: DiscriminatorConfig, resolution: int, use_camera: bool = True) -> None:
        super().__init__()
        self.cfg, self.use_camera = cfg, use_camera

        def channels(res: int) -> int:
            return min(cfg.channel_base // res, cfg.channel_max)

        clamp = CONV_CLAMP if cfg.num_fp16_res > 0 else None
        self.from_rgb = Conv2dLayer(3, channels(resolution), 1, activation="lrelu", clamp=clamp)
        resolutions = [2**i for i in range(int(math.log2(resolution)), 2, -1)]  # R ... 8
        half_from = max(2 ** (int(math.log2(resolution)) + 1 - cfg.num_fp16_res), 8)  # the reference's fp16_resolution
        self.blocks = nn.ModuleList(
            ResidualBlock(channels(r), channels(r // 2), clamp, half=cfg.num_fp16_res > 0 and r >= half_from)
            for r in resolutions
        )
        c4 = channels(4)
        self.conv = Conv2dLayer(c4 + cfg.mbstd_channels, c4, 3, activation="lrelu", clamp=clamp)
        self.fc = EqualLinear(c4 * 16, c4, activation="lrelu")
        self.cmap_dim = cfg.cmap_dim if use_camera else 0
        self.out = EqualLinear(c4, self.cmap_dim or 1)
        self.camera_mapping = (
            MappingNetwork(0, LABEL_DIM, cfg.cmap_dim, cfg.camera_mapping_layers, lr_mult=0.01, w_avg_beta=None)
            if use_camera
            else None
        )

    def forward(self, image: torch.Tensor, label: torch.Tensor | None = None, mbstd_group: int | None = None) -> torch.Tensor:
        """image [N, 3, H, W] in [-1, 1], label [N, 25] -> logits [N].

        mbstd_group overrides the configured group size (never larger than it), for batches
        whose heads number fewer than the group.
        """
        group = min(self.cfg.mbstd_group, mbstd_group or self.cfg.mbstd_group)
        cpu = image.device.type == "cpu"
        full = self.conv.weight.dtype  # float32 in training (float64 in tests)
        half = half_dtype(image.device) or full
        x = image.contiguous(memory_format=torch.channels_last) if cpu else image
        x = self.from_rgb(x.to(half if self.blocks[0].half else full))
        for block in self.blocks:
            x = block(x.to(half if block.half else full))
        x = minibatch_std(x.to(full).contiguous(), group, self.cfg.mbstd_channels)
        x = self.out(self.fc(self.conv(x).flatten(1)))  # [N, cmap_dim or 1]
        if self.camera_mapping is None:
            return x[:, 0]
        if label is None:
            raise ValueError("a camera-conditioned discriminator needs the camera label")
        cmap = self.camera_mapping(None, label)
        return (x * cmap).sum(dim=1) / math.sqrt(self.cmap_dim)
