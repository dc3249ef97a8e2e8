"""The Gaussians container: batched 3D Gaussians with their activations and .ply import/export.

Parameters are stored raw (what a network predicts), activations are properties:
    means           [B, N, 3]  world positions
    log_scales      [B, N, 3]  scale = exp(log_scales)
    quats           [B, N, 4]  rotation, (w, x, y, z), not necessarily normalised
    opacity_logits  [B, N]     opacity = sigmoid(opacity_logits)
    sh0             [B, N, 3]  degree-0 spherical-harmonics coefficient; rgb = max(0.5 + SH_C0 * sh0, 0)

This is the parameterisation of the 3D Gaussian Splatting .ply, so export is a copy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SH_C0 = 0.28209479177387814

PLY_PROPERTIES: tuple[str, ...] = (
    "x", "y", "z",
    "nx", "ny", "nz",
    "f_dc_0", "f_dc_1", "f_dc_2",
    "opacity",
    "scale_0", "scale_1", "scale_2",
    "rot_0", "rot_1", "rot_2", "rot_3",
)  # fmt: skip


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - 0.5) / SH_C0


@dataclass
class Gaussians:
    means: torch.Tensor
    log_scales: torch.Tensor
    quats: torch.Tensor
    opacity_logits: torch.Tensor
    sh0: torch.Tensor

    def __post_init__(self) -> None:
        b, n = self.means.shape[:2]
        expected = {
            "means": (b, n, 3),
            "log_scales": (b, n, 3),
            "quats": (b, n, 4),
            "opacity_logits": (b, n),
            "sh0": (b, n, 3),
        }
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"Gaussians.{name} has shape {got}, expected {shape}")

    @property
    def batch_size(self) -> int:
        return self.means.shape[0]

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[1]

    @property
    def scales(self) -> torch.Tensor:
        return self.log_scales.exp()

    @property
    def opacities(self) -> torch.Tensor:
        return torch.sigmoid(self.opacity_logits)

    @property
    def rgb(self) -> torch.Tensor:
        """Colour as 3DGS rasterizers evaluate degree-0 SH: 0.5 + SH_C0 * sh0, clamped at 0 (not at 1)."""
        return (0.5 + SH_C0 * self.sh0).clamp(min=0.0)

    @property
    def unit_quats(self) -> torch.Tensor:
        return F.normalize(self.quats, dim=-1)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def map(self, fn) -> "Gaussians":
        """A new container with `fn` applied to every tensor (e.g. `.detach()`, `.to(device)`)."""
        return Gaussians(**{k: fn(v) for k, v in self.tensors().items()})

    def replace(self, **tensors: torch.Tensor) -> "Gaussians":
        """A new container with some tensors swapped, e.g. `g.replace(means=clamped)`."""
        return dataclasses.replace(self, **tensors)

    def __getitem__(self, index) -> "Gaussians":
        """Select heads along the batch axis, keeping it (an int index gives a batch of one)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return self.map(lambda t: t[index])

    @staticmethod
    def cat(parts: list["Gaussians"]) -> "Gaussians":
        """Concatenate along the Gaussian axis (e.g. the levels of the generator)."""
        names = [f.name for f in fields(Gaussians)]
        return Gaussians(**{k: torch.cat([getattr(p, k) for p in parts], dim=1) for k in names})

    def save_ply(self, path: str | Path, index: int = 0) -> None:
        """Write head `index` as a standard 3DGS .ply (binary little endian)."""
        save_ply(self[index], path)

    @staticmethod
    def load_ply(path: str | Path) -> "Gaussians":
        return load_ply(path)


def save_ply(g: Gaussians, path: str | Path) -> None:
    if g.batch_size != 1:
        raise ValueError(f"save_ply writes one head, got a batch of {g.batch_size}")
    n = g.num_gaussians
    cols = torch.cat(
        [
            g.means[0],
            torch.zeros(n, 3, dtype=g.means.dtype, device=g.means.device),
            g.sh0[0],
            g.opacity_logits[0, :, None],
            g.log_scales[0],
            g.quats[0],
        ],
        dim=1,
    )
    data = cols.detach().cpu().to(torch.float32).numpy()
    assert data.shape[1] == len(PLY_PROPERTIES)
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {p}" for p in PLY_PROPERTIES]
    header += ["end_header"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(data.astype("<f4").tobytes())


def load_ply(path: str | Path) -> Gaussians:
    """Read a 3DGS .ply (binary little endian, float properties) written by us or another tool."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read()
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply") or end < 0:
        raise ValueError(f"{path}: not a PLY file")
    header = raw[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in header:
        raise ValueError(f"{path}: only binary little-endian PLY is supported")
    n = next(int(line.split()[2]) for line in header if line.startswith("element vertex"))
    props = [line.split() for line in header if line.startswith("property")]
    if any(p[1] != "float" for p in props):
        raise ValueError(f"{path}: expected float properties only")
    names = [p[2] for p in props]
    missing = [p for p in PLY_PROPERTIES if p not in names and p not in ("nx", "ny", "nz")]
    if missing:
        raise ValueError(f"{path}: missing properties {missing}")
    body = np.frombuffer(raw, dtype="<f4", count=n * len(names), offset=end + len(b"end_header\n"))
    table = torch.from_numpy(body.reshape(n, len(names)).copy())

    def col(*keys: str) -> torch.Tensor:
        return torch.stack([table[:, names.index(k)] for k in keys], dim=-1)[None]

    return Gaussians(
        means=col("x", "y", "z"),
        log_scales=col("scale_0", "scale_1", "scale_2"),
        quats=col("rot_0", "rot_1", "rot_2", "rot_3"),
        opacity_logits=col("opacity")[..., 0],
        sh0=col("f_dc_0", "f_dc_1", "f_dc_2"),
    )


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """Quaternions [..., 4] (w, x, y, z; normalised here) -> rotation matrices [..., 3, 3]."""
    w, x, y, z = F.normalize(q, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)  # fmt: skip


def covariance(log_scales: torch.Tensor, quats: torch.Tensor) -> torch.Tensor:
    """3D covariances [..., 3, 3] = R S S^T R^T."""
    m = quat_to_rotmat(quats) * log_scales.exp()[..., None, :]
    return m @ m.transpose(-1, -2)

