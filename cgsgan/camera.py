"""EG3D camera conventions.

A camera label is 25 floats: the 4x4 cam2world matrix (OpenCV convention: camera x right,
y down, z forward; row-major) followed by the 3x3 intrinsics normalised by the image size
(focal 4.2647, principal point 0.5 for FFHQ). Cameras sit on a sphere of radius 2.7 around
the origin and look at about (0, 0, 0.2); the frontal camera is at (0, 0, 2.7).

Yaw and pitch here are angles of the camera position: yaw > 0 moves the camera towards +x,
pitch > 0 moves it up (+y).
"""

from __future__ import annotations

import math

import torch

FOCAL = 4.2647
RADIUS = 2.7
LOOKAT = (0.0, 0.0, 0.2)
LABEL_DIM = 25


def intrinsics(focal: float = FOCAL, batch: int = 1, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised intrinsics [batch, 3, 3] (principal point at the image centre)."""
    k = torch.tensor([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]], device=device, dtype=dtype)
    return k.expand(batch, 3, 3).clone()


def look_at(origin: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """cam2world [..., 4, 4] for cameras at `origin` [..., 3] looking at `target` [..., 3].

    World +y is up, so the camera's y axis (image down) is roughly world -y.
    """
    forward = torch.nn.functional.normalize(target - origin, dim=-1)
    world_up = torch.zeros_like(forward)
    world_up[..., 1] = 1.0
    right = torch.nn.functional.normalize(torch.cross(forward, world_up, dim=-1), dim=-1)
    down = torch.cross(forward, right, dim=-1)
    c2w = torch.zeros(*origin.shape[:-1], 4, 4, dtype=origin.dtype, device=origin.device)
    c2w[..., :3, 0] = right
    c2w[..., :3, 1] = down
    c2w[..., :3, 2] = forward
    c2w[..., :3, 3] = origin
    c2w[..., 3, 3] = 1.0
    return c2w


def pose_from_angles(
    yaw: torch.Tensor, pitch: torch.Tensor, radius: float = RADIUS, lookat: tuple[float, float, float] = LOOKAT
) -> torch.Tensor:
    """cam2world [B, 4, 4] for cameras at (yaw, pitch) [B] radians on a sphere around the origin."""
    origin = torch.stack(
        [
            radius * torch.sin(yaw) * torch.cos(pitch),
            radius * torch.sin(pitch),
            radius * torch.cos(yaw) * torch.cos(pitch),
        ],
        dim=-1,
    )
    target = torch.tensor(lookat, dtype=yaw.dtype, device=yaw.device).expand_as(origin)
    return look_at(origin, target)


def make_label(cam2world: torch.Tensor, intr: torch.Tensor) -> torch.Tensor:
    """[B, 4, 4] + [B, 3, 3] -> labels [B, 25]."""
    return torch.cat([cam2world.reshape(*cam2world.shape[:-2], 16), intr.reshape(*intr.shape[:-2], 9)], dim=-1)


def split_label(label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """labels [..., 25] -> cam2world [..., 4, 4], normalised intrinsics [..., 3, 3]."""
    if label.shape[-1] != LABEL_DIM:
        raise ValueError(f"camera label must have {LABEL_DIM} values, got shape {tuple(label.shape)}")
    return label[..., :16].reshape(*label.shape[:-1], 4, 4), label[..., 16:].reshape(*label.shape[:-1], 3, 3)


def view_matrix(cam2world: torch.Tensor) -> torch.Tensor:
    """world-to-camera [..., 4, 4] (what a rasterizer such as gsplat takes as `viewmats`).

    The rotation block is orthonormal, so the inverse is its transpose; this keeps float64
    gradients exact and avoids a general matrix inverse.
    """
    rot = cam2world[..., :3, :3]
    t = cam2world[..., :3, 3:]
    rot_t = rot.transpose(-1, -2)
    w2c = torch.zeros_like(cam2world)
    w2c[..., :3, :3] = rot_t
    w2c[..., :3, 3:] = -rot_t @ t
    w2c[..., 3, 3] = 1.0
    return w2c


def pixel_intrinsics(intr: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Normalised intrinsics [..., 3, 3] -> pixel intrinsics for a width x height image."""
    k = intr.clone()
    k[..., 0, :] = k[..., 0, :] * width
    k[..., 1, :] = k[..., 1, :] * height
    return k


def camera_position(label: torch.Tensor) -> torch.Tensor:
    """Camera centres [..., 3] from labels [..., 25]."""
    return split_label(label)[0][..., :3, 3]


def yaw_pitch(label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Yaw and pitch [...] (radians) of the camera position, inverse of `pose_from_angles`."""
    p = camera_position(label)
    yaw = torch.atan2(p[..., 0], p[..., 2])
    pitch = torch.asin((p[..., 1] / p.norm(dim=-1)).clamp(-1.0, 1.0))
    return yaw, pitch


# The x-flip of the world, applied on both sides: mirrors the camera position in x and keeps
# the camera frame right-handed with x still pointing right in the (mirrored) image.
_FLIP = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0]))


def mirror_label(label: torch.Tensor) -> torch.Tensor:
    """Label of the x-flipped image (a yaw flip): cam2world -> F @ cam2world @ F, F = diag(-1,1,1,1).

    The intrinsics keep their principal point at the centre, so they stay as they are for the
    FFHQ-style labels; a general principal point cx is mirrored to 1 - cx.
    """
    c2w, intr = split_label(label)
    flip = _FLIP.to(dtype=label.dtype, device=label.device)
    c2w = flip @ c2w @ flip
    intr = intr.clone()
    intr[..., 0, 2] = 1.0 - intr[..., 0, 2]
    return make_label(c2w, intr)


def frontal_label(batch: int = 1, focal: float = FOCAL, device=None, dtype=torch.float32) -> torch.Tensor:
    """Labels [batch, 25] of the frontal camera at (0, 0, 2.7)."""
    zeros = torch.zeros(batch, device=device, dtype=dtype)
    return make_label(pose_from_angles(zeros, zeros), intrinsics(focal, batch, device, dtype))


def sample_gaussian_poses(
    batch: int,
    yaw_std: float = 0.3,
    pitch_std: float = 0.15,
    generator: torch.Generator | None = None,
    focal: float = FOCAL,
    dtype=torch.float32,
) -> torch.Tensor:
    """Labels [batch, 25] with yaw ~ N(0, yaw_std), pitch ~ N(0, pitch_std) (an FFHQ-like spread)."""
    yaw = torch.randn(batch, generator=generator, dtype=dtype) * yaw_std
    pitch = torch.randn(batch, generator=generator, dtype=dtype) * pitch_std
    return make_label(pose_from_angles(yaw, pitch), intrinsics(focal, batch, dtype=dtype))


def sample_uniform_yaw(
    batch: int,
    yaw_range: float = math.pi / 3,
    pitch: float = 0.0,
    generator: torch.Generator | None = None,
    focal: float = FOCAL,
    dtype=torch.float32,
) -> torch.Tensor:
    """Labels [batch, 25] with yaw ~ U(-yaw_range, yaw_range) at a fixed pitch."""
    yaw = (torch.rand(batch, generator=generator, dtype=dtype) * 2 - 1) * yaw_range
    pitch_t = torch.full((batch,), pitch, dtype=dtype)
    return make_label(pose_from_angles(yaw, pitch_t), intrinsics(focal, batch, dtype=dtype))


def yaw_sweep(num: int, yaw_range: float = math.pi / 3, focal: float = FOCAL) -> torch.Tensor:
    """Labels [num, 25] of a turntable: yaw from -yaw_range to +yaw_range at pitch 0."""
    yaw = torch.linspace(-yaw_range, yaw_range, num)
    return make_label(pose_from_angles(yaw, torch.zeros(num)), intrinsics(focal, num))


def project(points: torch.Tensor, label: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Pixel coordinates [..., N, 2] of world points [..., N, 3] seen by cameras `label` [..., 25].

    Pixel centres are at half-integers (gsplat's convention): the image centre is (W/2, H/2).
    """
    c2w, intr = split_label(label)
    w2c = view_matrix(c2w)
    cam = points @ w2c[..., :3, :3].transpose(-1, -2) + w2c[..., None, :3, 3]
    k = pixel_intrinsics(intr, width, height)
    uv = cam[..., :2] / cam[..., 2:3]
    return torch.stack(
        [uv[..., 0] * k[..., None, 0, 0] + k[..., None, 0, 2], uv[..., 1] * k[..., None, 1, 1] + k[..., None, 1, 2]],
        dim=-1,
    )


def validate_label(values, where: str) -> torch.Tensor:
    """A label from user data as a [25] tensor, or a ValueError that says where it came from."""
    t = torch.as_tensor(values, dtype=torch.float32) if not isinstance(values, torch.Tensor) else values
    if t.ndim != 1 or t.numel() != LABEL_DIM:
        raise ValueError(f"{where}: camera label must be {LABEL_DIM} numbers, got {t.numel()}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{where}: camera label has non-finite values")
    return t
