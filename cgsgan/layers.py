"""Building blocks shared by the generator and the discriminator, with StyleGAN2's semantics.

    EqualLinear      fully connected layer with equalised learning rate
    MappingNetwork   z (and/or a 25-float camera label) -> w, with the tracked w average
    Conv2dLayer      equalised-lr convolution, optionally 2x down with the [1,3,3,1] FIR filter
    normalize_2nd_moment

Activation gains are folded into the weights: leaky ReLU is positively homogeneous, so
lrelu(x) * g == lrelu(g * x) for g > 0, and scaling the (small) weight and bias instead of the
(large) activation saves a full pass over every activation and its gradient.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

Activation = Literal["linear", "lrelu"]
LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)  # StyleGAN's def_gain for lrelu: keeps the activations' second moment


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x [N, C] scaled to unit mean square over C."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class EqualLinear(nn.Module):
    """StyleGAN2's FullyConnectedLayer: x [..., in] -> [..., out].

    The weight is stored as randn * weight_init / lr_mult and used times lr_mult / sqrt(in), so
    Adam's step is the same for every layer; the bias is stored as bias_init and used times
    lr_mult (so its effective initial value is bias_init * lr_mult, as in the reference).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        activation: Activation = "linear",
        lr_mult: float = 1.0,
        weight_init: float = 1.0,
        bias_init: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) * (weight_init / lr_mult))
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init))) if bias else None
        act_gain = LRELU_GAIN if activation == "lrelu" else 1.0
        self.weight_gain = lr_mult / math.sqrt(in_features) * act_gain
        self.bias_gain = lr_mult * act_gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # bias_gain * b + weight_gain * x W^T in one addmm (its alpha and beta): the gains scale the
        # product instead of copies of the parameters, two fewer operations forward and backward.
        flat = x.reshape(-1, self.in_features)
        if self.bias is not None:
            y = torch.addmm(self.bias, flat, self.weight.t(), beta=self.bias_gain, alpha=self.weight_gain)
        else:
            y = torch.mm(flat, self.weight.t()).mul_(self.weight_gain)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return F.leaky_relu(y, LRELU_SLOPE, inplace=True) if self.activation == "lrelu" else y  # y is ours

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class MappingNetwork(nn.Module):
    """StyleGAN2 mapping: z [N, z_dim] and/or label c [N, c_dim] -> w [N, w_dim].

    The label goes through its own linear embedding (c_dim -> w_dim); z and the embedded label
    are each normalised to unit second moment and concatenated, then `num_layers` lrelu layers
    at learning-rate multiplier `lr_mult`. With w_avg_beta set, `w_avg` holds the running mean
    of w for truncation; it is updated only by `track_w_avg`, called by the trainer with the
    batch mean of w (averaged over ranks, so every rank holds the same buffer).
    """

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_layers: int,
        lr_mult: float = 0.01,
        w_avg_beta: float | None = 0.998,
    ) -> None:
        super().__init__()
        if z_dim == 0 and c_dim == 0:
            raise ValueError("a mapping network needs a latent, a label or both")
        self.z_dim, self.c_dim, self.w_dim, self.w_avg_beta = z_dim, c_dim, w_dim, w_avg_beta
        self.embed = EqualLinear(c_dim, w_dim) if c_dim > 0 else None
        dims = [z_dim + (w_dim if c_dim > 0 else 0)] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            EqualLinear(dims[i], dims[i + 1], activation="lrelu", lr_mult=lr_mult) for i in range(num_layers)
        )
        if w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor | None, c: torch.Tensor | None = None) -> torch.Tensor:
        parts = []
        dtype = self.layers[0].weight.dtype if len(self.layers) else torch.float32
        if self.z_dim > 0:
            if z is None or z.shape[-1] != self.z_dim:
                raise ValueError(f"expected a latent z of {self.z_dim} features")
            parts.append(normalize_2nd_moment(z.to(dtype)))
        if self.embed is not None:
            if c is None or c.shape[-1] != self.c_dim:
                raise ValueError(f"expected a label c of {self.c_dim} features")
            parts.append(normalize_2nd_moment(self.embed(c.to(dtype))))
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        for layer in self.layers:
            x = layer(x)
        return x

    @torch.no_grad()
    def track_w_avg(self, w_mean: torch.Tensor) -> None:
        """w_avg <- lerp(w_mean, w_avg, beta): the reference's update, given the batch mean of w [w_dim]."""
        self.w_avg.copy_(w_mean.detach().lerp(self.w_avg, self.w_avg_beta))

    def truncate(self, w: torch.Tensor, psi: float) -> torch.Tensor:
        """w pulled towards w_avg: psi = 1 leaves it, psi = 0 gives w_avg."""
        return w if psi == 1.0 else self.w_avg.lerp(w, psi)


def fir_filter(taps: tuple[float, ...] = (1.0, 3.0, 3.0, 1.0)) -> torch.Tensor:
    """StyleGAN2's setup_filter for a short 1-D filter: the 2-D outer product, normalised to sum 1."""
    f = torch.tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def fir(x: torch.Tensor, f: torch.Tensor, pad: int, down: int = 1) -> torch.Tensor:
    """upfirdn2d(x, f, padding=pad, down=down): zero padding, filtering, keeping every `down`-th
    pixel; one depthwise convolution. x [N, C, H, W], f [k, k] (symmetric, so no flip is needed)."""
    C = x.shape[1]
    if down > 1 and x.dtype == torch.bfloat16:
        return _fir_down2_bf16(x, f, pad)
    w = f.to(x.dtype)[None, None].expand(C, 1, *f.shape)
    return F.conv2d(x, w, stride=down, padding=pad, groups=C)


def _fir_down2_bf16(x: torch.Tensor, f: torch.Tensor, pad: int) -> torch.Tensor:
    """The [1,3,3,1] filter at stride 2, for bf16 on CPU: [1,3,3,1] = [1,2,1] * [1,1], so it is the
    [1,2,1] filter at stride 1 followed by 2x2 average pooling at stride 2 (the same output size
    and values). oneDNN's strided depthwise bf16 backward is ~6x slower than either, and filtering
    every pixel then slicing leaves gradients out of channels-last layout (a copy per layer)."""
    if f.shape != (4, 4):
        raise ValueError(f"bf16 down-sampling is written for the 4-tap [1,3,3,1] filter, got a {tuple(f.shape)} filter")
    C = x.shape[1]
    w = fir_filter((1.0, 2.0, 1.0)).to(x.dtype)[None, None].expand(C, 1, 3, 3)
    return F.avg_pool2d(F.conv2d(x, w, padding=pad, groups=C), 2)


class Conv2dLayer(nn.Module):
    """StyleGAN2's Conv2dLayer for the discriminator (no up-sampling): x [N, in, H, W] ->
    [N, out, H / down, W / down].

    down=2 is conv2d_resample's fast path: the FIR filter with the padding grown by 1 on each
    side, then a stride-2 convolution (3x3), or the FIR filter with stride 2 first (1x1).
    `gain` multiplies the output (the residual blocks use sqrt(1/2)); `clamp` bounds fp16
    outputs to +-clamp * gain (the reference's conv_clamp, its guard against fp16 overflow;
    bf16 and fp32 have the range of fp32 and skip it, so its backward pass costs nothing).
    Weights and bias are cast to the input's dtype, so a block fed half-precision activations
    runs in half precision.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        *,
        activation: Activation = "linear",
        bias: bool = True,
        down: int = 1,
        gain: float = 1.0,
        clamp: float | None = None,
    ) -> None:
        super().__init__()
        if down not in (1, 2):
            raise ValueError(f"down must be 1 or 2, got {down}")
        self.in_channels, self.out_channels, self.kernel, self.down = in_channels, out_channels, kernel, down
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        act_gain = (LRELU_GAIN if activation == "lrelu" else 1.0) * gain
        self.weight_gain = act_gain / math.sqrt(in_channels * kernel * kernel)
        self.bias_gain = act_gain
        self.padding = kernel // 2
        self.clamp = clamp * gain if clamp is not None else None
        if down > 1:
            self.register_buffer("resample_filter", fir_filter(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        b = (self.bias * self.bias_gain).to(x.dtype) if self.bias is not None else None
        if self.down == 1:
            x = F.conv2d(x, w, b, padding=self.padding)
        elif self.kernel == 1:
            x = F.conv2d(fir(x, self.resample_filter, pad=1 + self.padding, down=2), w, b)
        else:
            x = F.conv2d(fir(x, self.resample_filter, pad=1 + self.padding), w, b, stride=2)
        if self.activation == "lrelu":
            x = F.leaky_relu(x, LRELU_SLOPE, inplace=True)  # the convolution does not keep its output
        return x.clamp(-self.clamp, self.clamp) if self.clamp is not None and x.dtype == torch.float16 else x

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, kernel={self.kernel}, "
                f"down={self.down}, activation={self.activation}")
