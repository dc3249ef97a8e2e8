"""The camera-free CGS-GAN generator: z -> w -> a hierarchy of 3D Gaussians.

    z [B, z_dim] --mapping--> w [B, w_dim]
    learnable point cloud [P, 3] --tanh, positional encoding--> tokens [B, P, width]
    6 style-modulated transformer blocks, then one more block per extra level
    level i: tokens after block (base + i) --sub-pixel upsampling x R_i--> [B, P * R_i, c_i]
             --> Gaussian heads (rendered) and anchor heads (parents of level i+1)

No camera enters in the reference mode ("d_projection"): the same z gives bit-identical
Gaussians whatever camera later renders them. Mode "g_conditioned" feeds the camera label into
the mapping network as GSGAN/GGHead/EG3D do; it exists for the ablation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cgsgan.camera import LABEL_DIM
from cgsgan.config import UPSAMPLE_STEPS, GeneratorConfig, cumulative_upsampling, level_channels
from cgsgan.gaussians import Gaussians, quat_to_rotmat
from cgsgan.layers import EqualLinear, MappingNetwork

ATTRIBUTES = {"xyz": 3, "scale": 3, "rotation": 4, "color": 3, "opacity": 1}
# Initial scale of a head's weights and its bias, per attribute (small for scale and rotation
# so the hierarchy starts close to its parents; the scale bias shrinks children).
HEAD_INIT = {"xyz": (1.0, 0.0), "scale": (0.1, -1.0), "rotation": (0.1, 0.0), "color": (1.0, 0.0), "opacity": (1.0, 0.0)}


def soft_clamp(x: torch.Tensor, limit: float = 20.0) -> torch.Tensor:
    return torch.tanh(x / limit) * limit


@dataclass
class GeneratorOutput:
    gaussians: Gaussians  # all levels concatenated [B, sum_i P * R_i]: what gets rendered
    levels: list[Gaussians]  # the same, per level
    anchor_levels: list[Gaussians]  # anchors per level (not rendered); level i+1 children of level i
    ws: torch.Tensor  # [B, w_dim]

    @property
    def anchors(self) -> Gaussians:
        """Level-0 anchors [B, P]: what the compactness and centre losses act on."""
        return self.anchor_levels[0]


class PositionalEncoding(nn.Module):
    """Point [B, P, 3] -> token [B, P, width]: learned Fourier features (Linear 3->width/2, sin)
    next to a learned per-axis lookup table (width/2 channels, linearly interpolated at each
    coordinate, summed over the three axes)."""

    def __init__(self, width: int, table_res: int) -> None:
        super().__init__()
        half = width // 2
        self.fourier = nn.Linear(3, half)
        nn.init.uniform_(self.fourier.weight, -3.0, 3.0)  # sqrt(9 / fan_in): a wide frequency band
        self.table = nn.Parameter(torch.randn(3, half, table_res))

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        fourier = torch.sin(self.fourier(pos))
        # Linear interpolation along each axis's table at coordinates in [-1, 1]
        # (grid_sample on a 1-pixel-high image, align_corners=False).
        B, P, _ = pos.shape
        half, res = self.table.shape[1:]
        grid = torch.stack([pos.permute(2, 0, 1), torch.zeros_like(pos.permute(2, 0, 1))], dim=-1)  # [3, B, P, 2]
        table = self.table[:, None].expand(3, B, half, res).reshape(3 * B, half, 1, res)
        sampled = F.grid_sample(table, grid.reshape(3 * B, 1, P, 2), mode="bilinear", align_corners=False)
        lookup = sampled.reshape(3, B, half, P).sum(0).transpose(1, 2) / math.sqrt(3)  # [B, P, half]
        return torch.cat([fourier, lookup], dim=-1)


class AdaNorm(nn.Module):
    """Instance norm over the token axis, then a per-channel scale and shift predicted from w."""

    def __init__(self, width: int, w_dim: int) -> None:
        super().__init__()
        self.gamma = EqualLinear(w_dim, width, bias_init=1.0)
        self.beta = EqualLinear(w_dim, width)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # x [B, P, C], w [B, w_dim]
        mean = x.mean(1, keepdim=True)
        std = x.std(1, keepdim=True, unbiased=False)
        return (x - mean) / (std + 1e-8) * self.gamma(w)[:, None] + self.beta(w)[:, None]


class TransformerBlock(nn.Module):
    """x += Attn(AdaNorm(x, w)) * s1(w); x += MLP(AdaNorm(x, w)) * s2(w), s1 and s2 zero-init."""

    def __init__(self, width: int, heads: int, w_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = AdaNorm(width, w_dim)
        self.norm2 = AdaNorm(width, w_dim)
        self.qkv = EqualLinear(width, 3 * width)
        self.proj = EqualLinear(width, width)
        self.fc1 = EqualLinear(width, 4 * width)
        self.fc2 = EqualLinear(4 * width, width)
        self.scale1 = EqualLinear(w_dim, width, weight_init=0.0)
        self.scale2 = EqualLinear(w_dim, width, weight_init=0.0)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        B, P, C = x.shape
        q, k, v = self.qkv(x).reshape(B, P, self.heads, 3, C // self.heads).permute(3, 0, 2, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, P, C / heads]
        return self.proj(out.transpose(1, 2).reshape(B, P, C))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x, w)) * self.scale1(w)[:, None]
        mlp = self.fc2(F.gelu(self.fc1(self.norm2(x, w))) * math.sqrt(2))
        return x + mlp * self.scale2(w)[:, None]


class SubpixelUpsample(nn.Module):
    """[B, P, width] -> [B, P * R, c]: a linear layer makes R children per token, plus a residual
    (the parent's features, projected to c channels, repeated)."""

    def __init__(self, width: int, channels: int, ratio: int) -> None:
        super().__init__()
        self.ratio, self.channels = ratio, channels
        self.children_fc = EqualLinear(width, channels * ratio, activation="lrelu")
        self.residual = EqualLinear(width, channels) if width != channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, P, _ = x.shape
        children = self.children_fc(x).reshape(B, P * self.ratio, self.channels)
        return (self.residual(x).repeat_interleave(self.ratio, dim=1) + children) / math.sqrt(2)


class AttributeHeads(nn.Module):
    """Linear heads from a level's features to raw Gaussian attributes."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.heads = nn.ModuleDict(
            {k: EqualLinear(channels, n, weight_init=HEAD_INIT[k][0], bias_init=HEAD_INIT[k][1]) for k, n in ATTRIBUTES.items()}
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: head(x) for k, head in self.heads.items()}


class Generator(nn.Module):
    def __init__(self, cfg: GeneratorConfig, resolution: int, camera_conditioned: bool = False) -> None:
        super().__init__()
        self.cfg, self.resolution, self.camera_conditioned = cfg, resolution, camera_conditioned
        c_dim = LABEL_DIM if camera_conditioned else 0
        self.mapping = MappingNetwork(
            cfg.z_dim, cfg.w_dim, cfg.mapping_layers, cfg.mapping_lr_mult, c_dim=c_dim, w_avg_beta=cfg.w_avg_beta
        )
        # Random directions at radius `point_radius`, stored before the tanh squashing.
        directions = F.normalize(torch.randn(cfg.num_points, 3), dim=-1)
        self.points = nn.Parameter(directions * cfg.point_radius)
        self.encoding = PositionalEncoding(cfg.width, cfg.pe_res)
        num_blocks = cfg.base_blocks + cfg.num_levels - 1
        self.blocks = nn.ModuleList(TransformerBlock(cfg.width, cfg.heads, cfg.w_dim) for _ in range(num_blocks))
        self.upsample = nn.ModuleList(
            SubpixelUpsample(cfg.width, level_channels(cfg, i), cumulative_upsampling(i)) for i in range(cfg.num_levels)
        )
        self.gaussian_heads = nn.ModuleList(AttributeHeads(level_channels(cfg, i)) for i in range(cfg.num_levels))
        # The last level has no children, so no anchors (level 0 always has them: its Gaussians
        # are children of them, and the regularisers act on them).
        self.anchor_heads = nn.ModuleList(
            AttributeHeads(level_channels(cfg, i)) for i in range(max(1, cfg.num_levels - 1))
        )

        # Scale hierarchy: level-0 anchors start at exp(-5) and stay below 0.5 / sqrt(points); a
        # parent larger than a pixel splits its children's scale by `split_ratio`, spread so
        # that the finest level reaches one pixel at the target resolution.
        self.scale_threshold = math.log(0.5 / math.sqrt(cfg.num_points))
        self.pixel_scale = 1.0 / resolution  # ~ one pixel of a 1-unit-wide head at this resolution
        splits = max(1, math.log2(resolution * 2) - 2 - 1)
        self.split_ratio = math.exp((self.scale_threshold - math.log(self.pixel_scale)) / splits)

    def map(self, z: torch.Tensor, c: torch.Tensor | None = None, psi: float = 1.0, update_w_avg: bool = False):
        """z [B, z_dim] (and the camera label c [B, 25] in g_conditioned mode) -> w [B, w_dim]."""
        if self.camera_conditioned:
            if c is None:
                raise ValueError("g_conditioned generator needs the camera label c")
            return self.mapping(z, c, psi=psi, update_w_avg=update_w_avg)
        return self.mapping(z, psi=psi, update_w_avg=update_w_avg)

    def forward(
        self, z: torch.Tensor, c: torch.Tensor | None = None, psi: float = 1.0, update_w_avg: bool = False
    ) -> GeneratorOutput:
        return self.synthesize(self.map(z, c, psi, update_w_avg))

    def synthesize(self, w: torch.Tensor) -> GeneratorOutput:
        B = w.shape[0]
        pos = torch.tanh(self.points)[None].expand(B, -1, -1)  # [B, P, 3]
        x = self.encoding(pos)  # [B, P, width]
        for block in self.blocks[: self.cfg.base_blocks]:
            x = block(x, w)

        levels: list[Gaussians] = []
        anchor_levels: list[Gaussians] = []
        parent: dict[str, torch.Tensor] = {}  # previous level's anchors, one row per child
        for i in range(self.cfg.num_levels):
            if i > 0:
                x = self.blocks[self.cfg.base_blocks + i - 1](x, w)
                parent = {k: v.repeat_interleave(UPSAMPLE_STEPS[i], dim=1) for k, v in parent.items()}
            feats = self.upsample[i](x)  # [B, P * R_i, c_i]
            anchors = None
            if i < len(self.anchor_heads):
                raw = self.anchor_heads[i](feats)
                anchors = self._level0_anchors(raw) if i == 0 else self._child(raw, parent)
                anchor_levels.append(_as_gaussians(anchors))
            if i == 0:
                parent = anchors  # level-0 Gaussians are children of the level-0 anchors
            levels.append(_as_gaussians(self._child(self.gaussian_heads[i](feats), parent)))
            if anchors is not None:
                parent = anchors
        return GeneratorOutput(gaussians=Gaussians.cat(levels), levels=levels, anchor_levels=anchor_levels, ws=w)

    def _level0_anchors(self, raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Absolute anchors: position 0.2 * raw; log-scale -5 + raw, kept softly below the threshold."""
        t = self.scale_threshold
        scale = -F.softplus(-(-5.0 + soft_clamp(raw["scale"]) - t)) + t
        init_opacity = math.log(0.1 / 0.9)  # opacity 0.1
        return {
            "xyz": (0.2 * raw["xyz"]).clamp(-0.5, 0.5),
            "scale": scale,
            "rotation": soft_clamp(raw["rotation"] + raw["rotation"].new_tensor([1.0, 0, 0, 0])),
            "color": soft_clamp(raw["color"]),
            "opacity": soft_clamp(raw["opacity"] + init_opacity),
        }

    def _child(self, raw: dict[str, torch.Tensor], parent: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A child of its parent anchor: offset inside the parent's ellipsoid, never larger."""
        rot_scale = quat_to_rotmat(parent["rotation"]) * parent["scale"].exp()[..., None, :]  # R diag(s)
        xyz = (rot_scale @ torch.tanh(raw["xyz"])[..., None])[..., 0] + parent["xyz"]
        # Split: a parent larger than a pixel hands its children a smaller scale.
        split = (parent["scale"] - math.log(self.split_ratio)).clamp(max=0.0)
        big = parent["scale"].exp().amax(-1, keepdim=True) > self.pixel_scale
        base = torch.where(big, split, parent["scale"])
        return {
            "xyz": xyz.clamp(-0.5, 0.5),
            # Clamping the raw offset (not the result) keeps children at most their parent's size.
            "scale": base - F.softplus(-soft_clamp(raw["scale"])),
            "rotation": soft_clamp(raw["rotation"] + parent["rotation"]),
            "color": soft_clamp(raw["color"] + parent["color"]),
            "opacity": soft_clamp(raw["opacity"] + parent["opacity"]),
        }


def _as_gaussians(a: dict[str, torch.Tensor]) -> Gaussians:
    return Gaussians(
        means=a["xyz"], log_scales=a["scale"], quats=a["rotation"], opacity_logits=a["opacity"][..., 0], sh0=a["color"]
    )
