"""Camera-aware residual discriminator (StyleGAN2 "resnet" architecture).

The camera enters only here, at feature level: the 25-float label goes through its own mapping
network to an embedding, and the logit is the projection <features, embedding> / sqrt(dim).
Mode "d_none" drops the camera (a plain logit): the known collapse, kept as a baseline.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from cgsgan.camera import LABEL_DIM
from cgsgan.config import DiscriminatorConfig
from cgsgan.layers import EqualConv2d, EqualLinear, MappingNetwork


class MinibatchStd(nn.Module):
    """Appends the across-group standard deviation of features as extra channels.

    Groups are runs of `group` CONSECUTIVE samples: sample i is in group i // group. Callers
    order their batches so that no group holds two renders of the same head (see
    `losses.discriminator_order`); views of one head have low variance and would give fakes away.
    """

    def __init__(self, group: int, channels: int) -> None:
        super().__init__()
        self.group, self.channels = group, channels

    def group_size(self, n: int) -> int:
        g = min(self.group, n)
        if n % g:
            raise ValueError(f"minibatch-std group size {g} does not divide the batch of {n}")
        return g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        G, F_ = self.group_size(N), self.channels
        y = x.reshape(N // G, G, F_, C // F_, H, W)
        y = (y.var(dim=1, unbiased=False) + 1e-8).sqrt()  # [N/G, F, C/F, H, W]
        y = y.mean(dim=(2, 3, 4))  # [N/G, F]
        y = y.repeat_interleave(G, dim=0)[:, :, None, None].expand(N, F_, H, W)
        return torch.cat([x, y], dim=1)


class ResidualBlock(nn.Module):
    """conv3x3 -> conv3x3 -> 2x down, plus a 1x1 skip; (x + skip) / sqrt(2)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv0 = EqualConv2d(cin, cin, 3, activation="lrelu")
        self.conv1 = EqualConv2d(cin, cout, 3, activation="lrelu")
        self.skip = EqualConv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.skip(F.avg_pool2d(x, 2))
        x = F.avg_pool2d(self.conv1(self.conv0(x)), 2)
        return (x + skip) / math.sqrt(2)


class Discriminator(nn.Module):
    def __init__(self, cfg: DiscriminatorConfig, resolution: int, use_camera: bool = True) -> None:
        super().__init__()
        self.use_camera = use_camera

        def channels(res: int) -> int:
            return min(cfg.channel_base // res, cfg.channel_max)

        self.from_rgb = EqualConv2d(3, channels(resolution), 1, activation="lrelu")
        resolutions = [2**i for i in range(int(math.log2(resolution)), 2, -1)]  # res ... 8
        self.blocks = nn.ModuleList(ResidualBlock(channels(r), channels(r // 2)) for r in resolutions)
        c4 = channels(4)
        self.mbstd = MinibatchStd(cfg.mbstd_group, cfg.mbstd_channels)
        self.conv = EqualConv2d(c4 + cfg.mbstd_channels, c4, 3, activation="lrelu")
        self.fc = EqualLinear(c4 * 16, c4, activation="lrelu")
        out_dim = cfg.cmap_dim if use_camera else 1
        self.out = EqualLinear(c4, out_dim)
        self.cmap_dim = out_dim
        self.camera_mapping = (
            MappingNetwork(0, cfg.cmap_dim, cfg.camera_mapping_layers, lr_mult=0.01, c_dim=LABEL_DIM)
            if use_camera
            else None
        )

    def forward(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """image [N, 3, H, W] in [-1, 1], label [N, 25] -> logits [N]."""
        x = self.from_rgb(image)
        for block in self.blocks:
            x = block(x)
        x = self.mbstd(x)
        x = self.fc(self.conv(x).flatten(1))
        x = self.out(x)  # [N, cmap_dim]
        if self.camera_mapping is None:
            return x[:, 0]
        if label is None:
            raise ValueError("a camera-conditioned discriminator needs the camera label")
        cmap = self.camera_mapping(label.new_zeros(label.shape[0], 0), label)
        return (x * cmap).sum(dim=1) / math.sqrt(self.cmap_dim)
