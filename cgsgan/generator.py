"""The camera-free CGS-GAN generator: z -> w -> a hierarchy of 3D Gaussians (the reference's
CGSGenerator + PointGenerator, written anew).

    z [B, z_dim], label [B, 25] (all zeros unless camera-conditioned) --mapping--> w [B, w_dim]
    learnable point cloud [P, 3] --tanh, Fourier features + learned table--> tokens [P, width]
    base_blocks style-modulated transformer blocks, then one more block per extra level
    level i: tokens after block (base + i - 1) --sub-pixel upsampling x R_i--> [B, P * R_i, c_i]
             --> Gaussian heads (rendered) and anchor heads (parents of level i + 1)

No camera enters in the reference modes ("d_projection", "d_none"): the mapping network's label
input is zeroed, so the same z gives bit-identical Gaussians whatever camera later renders them.
Mode "g_conditioned" feeds the real label instead (as GSGAN/GGHead/EG3D do), for the ablation.
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

# Raw attributes every head predicts, with (weight init, bias init) of its linear layer: small
# weights for scale and rotation keep children close to their parents at the start, and the
# scale bias of -1 makes every child smaller than its parent.
ATTRIBUTES = {"xyz": (3, 1.0, 0.0), "scale": (3, 0.1, -1.0), "rotation": (4, 0.1, 0.0), "color": (3, 1.0, 0.0),
              "opacity": (1, 1.0, 0.0)}
# Level-0 anchors are children of this implicit root (the reference's `prev_anchors`).
ROOT_LOG_SCALE = -5.0
ROOT_OPACITY = math.log(0.1 / 0.9)  # opacity 0.1
LEVEL0_XYZ_SCALE = 0.2
RENDER_BOX = 0.5  # rendered positions are clamped to [-0.5, 0.5]^3


def soft_clamp(x: torch.Tensor, limit: float = 20.0) -> torch.Tensor:
    """tanh(x / limit) * limit: identity near 0, bounded by +-limit."""
    return torch.tanh(x / limit) * limit


@dataclass
class GeneratorOutput:
    gaussians: Gaussians  # all levels concatenated [B, sum_i P * R_i], positions clamped: what gets rendered
    levels: list[Gaussians]  # per level, before the clamp
    anchor_levels: list[Gaussians]  # anchors of levels 0 .. L-2 (not rendered); level i+1 are children of level i
    ws: torch.Tensor  # [B, w_dim]

    @property
    def anchors(self) -> Gaussians:
        """Level-0 anchors [B, P]: what the compactness and centre losses act on."""
        return self.anchor_levels[0]


class PositionalEncoding(nn.Module):
    """Points [P, 3] in (-1, 1) -> tokens [P, width]: learned Fourier features sin(Linear 3 -> width/2)
    next to a learned per-axis table (width/2 channels, summed over the three axes / sqrt(3)).

    The table is [3, width/2, 1, table_res] as in the reference, which samples it with
    grid_sample at (x = 0, y = coordinate): on a one-row table that reads the two middle columns,
    weighted by (1 - |coordinate| / 2) (zero padding). So in effect it is a learned constant
    per axis, scaled by distance from the centre, not a positional lookup; `lookup="reference"`
    reproduces it. `lookup="positional"` samples (x = coordinate, y = 0): a true lookup along
    the table, the ablation "what if the table were positional".
    """

    def __init__(self, width: int, table_res: int, lookup: str = "reference") -> None:
        super().__init__()
        half = width // 2
        self.lookup = lookup
        self.fourier = nn.Linear(3, half)  # bias keeps torch's default init, as the reference's nn.Linear
        bound = math.sqrt(9 / 3)  # the reference's first-layer init: uniform in +-sqrt(9 / fan_in)
        nn.init.uniform_(self.fourier.weight, -bound, bound)
        self.table = nn.Parameter(torch.randn(3, half, 1, table_res))

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        P = pos.shape[0]
        coord = pos.t().reshape(3, 1, P, 1)  # [3, 1, P, 1]: one "image" per axis
        zero = torch.zeros_like(coord)
        grid = torch.cat([zero, coord] if self.lookup == "reference" else [coord, zero], dim=-1)  # [3, 1, P, 2]
        sampled = F.grid_sample(self.table, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        table = sampled.sum(0)[:, 0].t() / math.sqrt(3)  # [3, C, 1, P] -> [P, C]
        return torch.cat([torch.sin(self.fourier(pos)), table], dim=-1)


class AdaNorm(nn.Module):
    """Instance norm over the token axis, then a per-channel scale (bias init 1) and shift from w."""

    def __init__(self, width: int, w_dim: int) -> None:
        super().__init__()
        self.gamma = EqualLinear(w_dim, width, bias_init=1.0)
        self.beta = EqualLinear(w_dim, width)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # x [B, P, C], w [B, w_dim]
        x = (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True, unbiased=False) + 1e-8)
        return x * self.gamma(w)[:, None] + self.beta(w)[:, None]


class TransformerBlock(nn.Module):
    """x += Attn(AdaNorm(x, w)) * s1(w); x += MLP(AdaNorm(x, w)) * s2(w); s1, s2 zero-init (identity at init)."""

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
        # None: float32. torch.bfloat16 on CUDA (train.autocast_bf16): the block's matmuls under
        # autocast; its output, the residual stream, is returned in float32.
        self.autocast_dtype: torch.dtype | None = None

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        B, P, C = x.shape
        # Per head the projection holds [q, k, v] side by side, as the reference's view + split.
        q, k, v = self.qkv(x).reshape(B, P, self.heads, 3, C // self.heads).permute(3, 0, 2, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, P, C / heads], scale 1 / sqrt(C / heads)
        return self.proj(out.transpose(1, 2).reshape(B, P, C))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.autocast_dtype is not None and x.device.type == "cuda":
            with torch.autocast("cuda", dtype=self.autocast_dtype):
                return self._forward(x, w).float()
        return self._forward(x, w)

    def _forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x, w)) * self.scale1(w)[:, None]
        mlp = self.fc2(F.gelu(self.fc1(self.norm2(x, w))) * math.sqrt(2))
        return x + mlp * self.scale2(w)[:, None]


class SubpixelUpsample(nn.Module):
    """[B, P, width] -> [B, P * R, c]: an lrelu layer makes R children per token, plus a residual
    (the token projected to c channels, repeated), the sum scaled by sqrt(1/2)."""

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
    """Linear heads from a level's features [B, N, c] to raw attributes {name: [B, N, k]}."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.heads = nn.ModuleDict(
            {k: EqualLinear(channels, n, weight_init=wi, bias_init=bi) for k, (n, wi, bi) in ATTRIBUTES.items()}
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: head(x) for k, head in self.heads.items()}


class Generator(nn.Module):
    def __init__(self, cfg: GeneratorConfig, resolution: int, camera_conditioned: bool = False) -> None:
        super().__init__()
        self.cfg, self.resolution, self.camera_conditioned = cfg, resolution, camera_conditioned
        # The label input exists in every mode (the reference's mapping takes it and zeroes it):
        # the architecture, and so a checkpoint, is the same whatever the camera mode.
        self.mapping = MappingNetwork(cfg.z_dim, LABEL_DIM, cfg.w_dim, cfg.mapping_layers, cfg.mapping_lr_mult,
                                      w_avg_beta=cfg.w_avg_beta)
        # Gaussian noise, each point scaled to unit RMS over x, y, z, times point_radius; stored
        # before the tanh that keeps the points inside (-1, 1).
        pts = torch.randn(cfg.num_points, 3)
        self.points = nn.Parameter(pts * torch.rsqrt(pts.square().mean(1, keepdim=True) + 1e-8) * cfg.point_radius)
        self.encoding = PositionalEncoding(cfg.width, cfg.pe_res, cfg.pe_lookup)
        num_blocks = cfg.base_blocks + cfg.num_levels - 1
        self.blocks = nn.ModuleList(TransformerBlock(cfg.width, cfg.heads, cfg.w_dim) for _ in range(num_blocks))
        self.upsample = nn.ModuleList(
            SubpixelUpsample(cfg.width, level_channels(cfg, i), cumulative_upsampling(i)) for i in range(cfg.num_levels)
        )
        self.gaussian_heads = nn.ModuleList(AttributeHeads(level_channels(cfg, i)) for i in range(cfg.num_levels))
        # One set of anchor heads per level, as the reference builds them. The last level's are
        # never used (it has no children); they are kept so that the parameters are the
        # reference's one for one (61,610,712 at 512).
        self.anchor_heads = nn.ModuleList(AttributeHeads(level_channels(cfg, i)) for i in range(cfg.num_levels))

        # Scale hierarchy (reference train.py): level-0 anchors stay softly below
        # log(0.5 / sqrt(points)); a parent larger than half a pixel (0.5 / resolution) splits,
        # handing its children a log-scale smaller by log(split_ratio), the ratio spread over
        # log2(resolution) - 4 splits (1.866 at 512).
        self.scale_threshold = math.log(0.5 / math.sqrt(cfg.num_points))
        self.split_min_scale = 0.5 / resolution
        splits = math.log2(resolution) - 4
        if splits < 1 or cfg.num_levels < 2:
            raise ValueError(f"resolution {resolution} and {cfg.num_levels} levels: the hierarchy needs a resolution "
                             ">= 32 (at least one scale split) and at least 2 levels (level-0 anchors)")
        self.split_ratio = math.exp((self.scale_threshold - math.log(self.split_min_scale)) / splits)

    def map(self, z: torch.Tensor, c: torch.Tensor | None = None, psi: float = 1.0) -> torch.Tensor:
        """z [B, z_dim] (and, camera-conditioned, the label c [B, 25]) -> w [B, w_dim], truncated by psi."""
        if self.camera_conditioned:
            if c is None:
                raise ValueError("a g_conditioned generator needs the camera label c")
            label = c.to(z.dtype)
        else:
            label = z.new_zeros(z.shape[0], LABEL_DIM)  # camera-free: whatever c is, the label is zero
        return self.mapping.truncate(self.mapping(z, label), psi)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, psi: float = 1.0) -> GeneratorOutput:
        return self.synthesize(self.map(z, c, psi))

    def synthesize(self, w: torch.Tensor) -> GeneratorOutput:
        B = w.shape[0]
        # The points are shared by every head: encode them once.
        x = self.encoding(torch.tanh(self.points))[None].expand(B, -1, -1)  # [B, P, width]
        for block in self.blocks[: self.cfg.base_blocks]:
            x = block(x, w)

        levels: list[Gaussians] = []
        anchor_levels: list[Gaussians] = []
        parent: dict[str, torch.Tensor] = {}  # the previous level's anchors, one row per child
        last = self.cfg.num_levels - 1
        for i in range(self.cfg.num_levels):
            if i > 0:
                x = self.blocks[self.cfg.base_blocks + i - 1](x, w)
                parent = {k: v.repeat_interleave(UPSAMPLE_STEPS[i], dim=1) for k, v in parent.items()}
            feats = self.upsample[i](x)  # [B, P * R_i, c_i]
            if i < last:
                raw = self.anchor_heads[i](feats)
                anchors = self._level0_anchors(raw) if i == 0 else self._child(raw, parent)
                anchor_levels.append(_as_gaussians(anchors))
            # Level-0 Gaussians are children of the level-0 anchors, the others of the previous level's.
            levels.append(_as_gaussians(self._child(self.gaussian_heads[i](feats), anchors if i == 0 else parent)))
            if i < last:
                parent = anchors
        rendered = Gaussians.cat(levels)
        rendered = rendered.replace(means=rendered.means.clamp(-RENDER_BOX, RENDER_BOX))
        return GeneratorOutput(gaussians=rendered, levels=levels, anchor_levels=anchor_levels, ws=w)

    def _level0_anchors(self, raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Absolute anchors: position 0.2 * raw; log-scale -5 + raw, softly kept below the threshold."""
        t = self.scale_threshold
        scale = -F.softplus(-(ROOT_LOG_SCALE + raw["scale"] - t)) + t
        return {
            "xyz": LEVEL0_XYZ_SCALE * raw["xyz"],
            "scale": soft_clamp(scale),
            "rotation": soft_clamp(raw["rotation"] + raw["rotation"].new_tensor([1.0, 0.0, 0.0, 0.0])),
            "color": soft_clamp(raw["color"]),
            "opacity": soft_clamp(raw["opacity"] + ROOT_OPACITY),
        }

    def _child(self, raw: dict[str, torch.Tensor], parent: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A child of its parent anchor: inside the parent's ellipsoid, never larger than it."""
        rot_scale = quat_to_rotmat(parent["rotation"]) * parent["scale"].exp()[..., None, :]  # R diag(s)
        xyz = (rot_scale @ torch.tanh(raw["xyz"])[..., None])[..., 0] + parent["xyz"]
        # A parent larger than half a pixel hands its children a split (smaller) scale.
        split = (parent["scale"] - math.log(self.split_ratio)).clamp(-100.0, 0.0)
        big = parent["scale"].exp().amax(-1, keepdim=True) > self.split_min_scale
        base = torch.where(big, split, parent["scale"])
        return {
            "xyz": xyz,
            "scale": soft_clamp(base - F.softplus(-raw["scale"])),
            "rotation": soft_clamp(raw["rotation"] + parent["rotation"]),
            "color": soft_clamp(raw["color"] + parent["color"]),
            "opacity": soft_clamp(raw["opacity"] + parent["opacity"]),
        }


def _as_gaussians(a: dict[str, torch.Tensor]) -> Gaussians:
    return Gaussians(
        means=a["xyz"], log_scales=a["scale"], quats=a["rotation"], opacity_logits=a["opacity"][..., 0], sh0=a["color"]
    )
