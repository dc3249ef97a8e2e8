"""Small building blocks shared by the generator and the discriminator."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate (StyleGAN): weights stored at unit scale and
    multiplied by lr_mult / sqrt(fan_in) at run time, so Adam's step size is per-layer fair."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        lr_mult: float = 1.0,
        weight_init: float = 1.0,
        bias_init: float = 0.0,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        if activation not in (None, "lrelu"):
            raise ValueError(f"unknown activation {activation!r}")
        self.weight = nn.Parameter(torch.randn(out_features, in_features) * (weight_init / lr_mult))
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mult))
        self.weight_gain = lr_mult / math.sqrt(in_features)
        self.bias_gain = lr_mult
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        if self.activation == "lrelu":
            x = F.leaky_relu(x, 0.2) * math.sqrt(2)
        return x


class MappingNetwork(nn.Module):
    """z [B, z_dim] (+ optional condition [B, c_dim]) -> w [B, w_dim], tracking w_avg for truncation."""

    def __init__(
        self, z_dim: int, w_dim: int, num_layers: int, lr_mult: float = 0.01, c_dim: int = 0, w_avg_beta: float = 0.998
    ) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_avg_beta = z_dim, c_dim, w_avg_beta
        self.embed = EqualLinear(c_dim, w_dim) if c_dim > 0 else None
        dims = [z_dim + (w_dim if c_dim > 0 else 0)] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            EqualLinear(dims[i], dims[i + 1], lr_mult=lr_mult, activation="lrelu") for i in range(num_layers)
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(
        self, z: torch.Tensor, c: torch.Tensor | None = None, psi: float = 1.0, update_w_avg: bool = False
    ) -> torch.Tensor:
        x = normalize_2nd_moment(z)
        if self.embed is not None:
            if c is None:
                raise ValueError("this mapping network is conditioned: pass c")
            x = torch.cat([x, normalize_2nd_moment(self.embed(c))], dim=1)
        for layer in self.layers:
            x = layer(x)
        if update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
        if psi != 1.0:
            x = self.w_avg.lerp(x, psi)
        return x


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class EqualConv2d(nn.Module):
    """3x3 / 1x1 convolution with equalised learning rate."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, activation: str | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.gain = 1.0 / math.sqrt(in_channels * kernel * kernel)
        self.padding = kernel // 2
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight * self.gain, self.bias, padding=self.padding)
        if self.activation == "lrelu":
            x = F.leaky_relu(x, 0.2) * math.sqrt(2)
        return x
