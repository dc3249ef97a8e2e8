"""Built-in synthetic multi-view heads: a procedural head per identity, rendered by analytic ray casting.

Each identity (seeded by (seed, identity)) is a small set of ellipsoids: skull, hair cap (clipped by
a plane so the face stays free), optional long hair at the back, eyes (sclera + iris), ears, nose,
mouth and neck, each with its own colour. Rays from EG3D cameras hit the nearest ellipsoid and get
a Lambertian shade under a fixed world light, so the colour of a surface point does not depend on
the viewpoint: a true 3D object that a camera-free generator can reproduce exactly.

This renderer is deliberately independent of the project's Gaussian renderer, so that it can serve
as ground truth for it.

Output is the FFHQC layout: `OUT/<res>/NNNNN.png` (RGB composited on white), `OUT/mask/NNNNN.png`
(L, 255 = head), `OUT/dataset.json` with labels and identities, `OUT/synthetic.json` with the
generation parameters, and `OUT/attributes.csv` (per-image attributes, for the curation tool).

CLI: python -m cgsgan.data.synthetic --out DIR [--identities 256 --views 4 --resolution 64 --seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cgsgan import camera

# Bump when the head model or the renderer changes: cached datasets are regenerated, and ground
# truth renders of an old dataset would no longer match its images.
VERSION = 1

# The FFHQ-like pose spread (yaw 17 degrees; 1 image in ~1,000 beyond 60): the default. A wider
# one (data.synthetic_yaw_std, _limit) is a testbed choice: more side views per identity.
YAW_STD = 0.3
PITCH_STD = 0.15
# Poses far in the tails would show the back of the head or look from straight above; the
# clamp is a few standard deviations out, so the spread stays ~N(0, std).
YAW_LIMIT = 1.2
MAX_YAW_LIMIT = math.pi / 2  # beyond a profile the camera sees the back of the head
PITCH_LIMIT = 0.6
SUPERSAMPLE = 2  # 2x2 samples per pixel: anti-aliased edges and soft mask borders

# Fixed world light from the front and above (x = 0 keeps frontal renders left-right symmetric).
LIGHT = torch.nn.functional.normalize(torch.tensor([0.0, 0.5, 1.0]), dim=0)
AMBIENT, DIFFUSE = 0.35, 0.65

HAIR_COLOURS = {
    "black": (0.08, 0.06, 0.05),
    "brown": (0.30, 0.18, 0.10),
    "light_brown": (0.55, 0.38, 0.20),
    "blond": (0.86, 0.72, 0.42),
    "red": (0.62, 0.26, 0.10),
    "grey": (0.70, 0.70, 0.70),
}
HAIR_PROBS = (0.3, 0.3, 0.12, 0.12, 0.08, 0.08)
EYE_COLOURS = {
    "brown": (0.35, 0.20, 0.10),
    "blue": (0.25, 0.45, 0.75),
    "green": (0.30, 0.52, 0.30),
    "grey": (0.45, 0.47, 0.52),
}
EYE_PROBS = (0.45, 0.25, 0.15, 0.15)
LIGHT_SKIN, DARK_SKIN = np.array([0.96, 0.80, 0.68]), np.array([0.40, 0.26, 0.18])
SCLERA = (0.95, 0.95, 0.93)

# Primitive slots (fixed, so heads stack into dense tensors; absent parts are inactive).
PARTS = ("skull", "hair", "long_hair", "eye_l", "eye_r", "iris_l", "iris_r", "nose", "mouth", "ear_l", "ear_r", "neck")
NUM_PRIMS = len(PARTS)


@dataclass
class Heads:
    """A batch of B procedural heads, K = NUM_PRIMS ellipsoids each (world units, y up, face to +z).

    centre [B, K, 3]; radii [B, K, 3] (semi-axes in the local frame); rot [B, K, 3, 3] (world from
    local); colour [B, K, 3] albedo in [0, 1]; clip_n [B, K, 3], clip_d [B, K]: a surface point p
    counts only where clip_n . p >= clip_d (clip_n = 0, clip_d = -1 for "no clip");
    active [B, K] bool.
    """

    centre: torch.Tensor
    radii: torch.Tensor
    rot: torch.Tensor
    colour: torch.Tensor
    clip_n: torch.Tensor
    clip_d: torch.Tensor
    active: torch.Tensor

    def __getitem__(self, idx) -> "Heads":
        return Heads(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    @staticmethod
    def stack(heads: list["Heads"]) -> "Heads":
        return Heads(*(torch.stack([getattr(h, f) for h in heads]) for f in Heads.__dataclass_fields__))


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rng(seed: int, identity: int) -> np.random.Generator:
    if seed < 0 or identity < 0:
        raise ValueError(f"seed and identity must be >= 0, got seed={seed}, identity={identity}")
    # One independent stream per (seed, identity): identity i is the same head whatever the
    # number of identities generated.
    return np.random.default_rng([seed, identity])


def sample_head(seed: int, identity: int) -> tuple[Heads, dict]:
    """The head of `identity` under `seed`: primitives (unbatched, [K, ...]) and its attributes."""
    rng = _rng(seed, identity)
    u = rng.uniform

    # Skull: the head is ~0.32 wide and ~0.55 tall with hair and neck; the EG3D camera
    # (focal 4.26 at distance 2.7) sees about +-0.3 around the look-at point.
    rx, ry, rz = u(0.145, 0.17), u(0.18, 0.21), u(0.17, 0.20)
    cy, cz = 0.01, -0.01

    def face_z(x: float, y: float) -> float:  # z of the skull's front surface at (x, y)
        s = 1 - (x / rx) ** 2 - ((y - cy) / ry) ** 2
        return cz + rz * math.sqrt(max(s, 0.0))

    skin_t = u(0.0, 1.0)
    skin = np.clip((1 - skin_t) * LIGHT_SKIN + skin_t * DARK_SKIN + rng.normal(0, 0.02, 3), 0, 1)
    hair_name = str(rng.choice(list(HAIR_COLOURS), p=HAIR_PROBS))
    # Brightness jitter plus a little per-channel noise: varied shades, still the named colour.
    hair = np.clip(np.array(HAIR_COLOURS[hair_name]) * u(0.8, 1.2) + rng.normal(0, 0.015, 3), 0, 1)
    eye_name = str(rng.choice(list(EYE_COLOURS), p=EYE_PROBS))
    iris = np.clip(np.array(EYE_COLOURS[eye_name]) + rng.normal(0, 0.03, 3), 0, 1)
    bald = u() < 0.08
    long_hair = (not bald) and u() < 0.35

    eye_y, eye_x, eye_r = cy + u(-0.01, 0.02), u(0.05, 0.065), u(0.022, 0.028)
    nose_y = eye_y - u(0.05, 0.07)
    mouth_y = nose_y - u(0.05, 0.065)
    hairline_y = eye_y + u(0.05, 0.09)
    hair_tilt = u(0.5, 0.9)  # radians: how far down the hair reaches at the back

    prims: dict[str, tuple] = {}  # name -> (centre, radii, rot, colour, clip_n, clip_d)
    eye3 = np.eye(3)
    no_clip = (np.zeros(3), -1.0)
    prims["skull"] = ((0, cy, cz), (rx, ry, rz), eye3, skin, *no_clip)
    if not bald:
        hc = np.array([0.0, cy + u(0.005, 0.02), cz - u(0.0, 0.02)])
        hr = (rx + u(0.005, 0.02), ry + u(0.02, 0.05), rz + u(0.01, 0.04))
        n = np.array([0.0, math.cos(hair_tilt), -math.sin(hair_tilt)])
        p0 = np.array([0.0, hairline_y, cz + rz])  # the hairline in front of the forehead
        prims["hair"] = (hc, hr, eye3, hair, n, float(n @ p0))
    if long_hair:
        prims["long_hair"] = ((0, cy - u(0.1, 0.14), cz - rz * 0.7), (rx * 0.9, u(0.15, 0.19), u(0.06, 0.09)),
                              eye3, hair * 0.9, *no_clip)
    for side, sx in (("l", -1), ("r", 1)):
        ex = sx * eye_x
        ez = face_z(ex, eye_y) - 0.6 * eye_r  # the eyeball shows 40% of its radius
        prims[f"eye_{side}"] = ((ex, eye_y, ez), (eye_r,) * 3, eye3, np.array(SCLERA), *no_clip)
        prims[f"iris_{side}"] = ((ex, eye_y, ez + 0.75 * eye_r), (0.55 * eye_r,) * 3, eye3, iris, *no_clip)
        ear_r = (u(0.02, 0.03), u(0.045, 0.06), u(0.03, 0.04))
        prims[f"ear_{side}"] = ((sx * (rx - 0.005), eye_y - 0.02, cz - 0.01), ear_r, _rot_y(sx * 0.35),
                                skin * 0.93, *no_clip)
    nose_r = (u(0.02, 0.03), u(0.04, 0.055), u(0.035, 0.05))
    prims["nose"] = ((0, nose_y, face_z(0, nose_y) - 0.01), nose_r, _rot_x(-0.25), skin * 0.97, *no_clip)
    mouth_r = (u(0.035, 0.055), u(0.008, 0.016), 0.02)
    lips = np.clip(skin * np.array([0.85, 0.52, 0.52]), 0, 1)
    prims["mouth"] = ((0, mouth_y, face_z(0, mouth_y) - 0.008), mouth_r, eye3, lips, *no_clip)
    neck_r = (u(0.075, 0.095), 0.2, u(0.075, 0.095))
    prims["neck"] = ((0, cy - ry * 0.9 - 0.1, cz - 0.03), neck_r, eye3, skin * 0.85, *no_clip)

    f32 = dict(dtype=torch.float32)
    centre, radii, rot = torch.zeros(NUM_PRIMS, 3), torch.ones(NUM_PRIMS, 3), torch.eye(3).repeat(NUM_PRIMS, 1, 1)
    colour, clip_n, clip_d = torch.zeros(NUM_PRIMS, 3), torch.zeros(NUM_PRIMS, 3), -torch.ones(NUM_PRIMS)
    active = torch.zeros(NUM_PRIMS, dtype=torch.bool)
    for k, name in enumerate(PARTS):
        if name not in prims:
            continue
        c, r, R, col, n, d = prims[name]
        centre[k], radii[k], rot[k] = torch.tensor(c, **f32), torch.tensor(r, **f32), torch.tensor(R, **f32)
        colour[k], clip_n[k], clip_d[k] = torch.tensor(col, **f32), torch.tensor(n, **f32), float(d)
        active[k] = True
    attrs = {"hair": "none" if bald else hair_name, "eyes": eye_name, "long_hair": int(long_hair),
             "bald": int(bald), "skin": round(float(skin_t), 4)}
    return Heads(centre, radii, rot, colour, clip_n, clip_d, active), attrs


def sample_views(seed: int, identity: int, views: int, yaw_std: float = YAW_STD,
                 yaw_limit: float = YAW_LIMIT) -> torch.Tensor:
    """Camera labels [views, 25] of `identity`: yaw ~ N(0, yaw_std) clamped at +-yaw_limit
    (radians), pitch ~ N(0, 0.15) clamped at +-0.6. The same normal draws for any spread: a
    wider spread turns the same views further."""
    rng = _rng(seed, identity)
    # A stream of its own, spawned from (seed, identity), separate from the head's draws: changing
    # the head model does not reshuffle the poses.
    pose_rng = np.random.default_rng(rng.bit_generator.seed_seq.spawn(1)[0])
    z = pose_rng.standard_normal((views, 2))  # one (yaw, pitch) row per view: more views extend, not reshuffle
    yaw = np.clip(z[:, 0] * yaw_std, -yaw_limit, yaw_limit)
    pitch = np.clip(z[:, 1] * PITCH_STD, -PITCH_LIMIT, PITCH_LIMIT)
    pose = camera.pose_from_angles(torch.tensor(yaw, dtype=torch.float32), torch.tensor(pitch, dtype=torch.float32))
    return camera.make_label(pose, camera.intrinsics(batch=views))


@contextlib.contextmanager
def single_thread():
    """Run torch on one thread for the block (restored after).

    The ray caster issues many mid-sized elementwise ops; on a machine whose cores are busy with
    other work, multi-threaded ops stall at every barrier (measured 8x slower on 2 shared cores),
    while one thread degrades gracefully.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Explicit 3-term sum rather than matmul/einsum: the same result whatever the thread count,
    # so the output files are byte-identical across machines' BLAS choices.
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def camera_rays(labels: torch.Tensor, resolution: int, supersample: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray origins [B, 3] and (unnormalised) directions [B, P, 3], P = (resolution * supersample)^2.

    OpenCV pinhole, pixel centres at half-integers: pixel (i, j)'s sample (a, b) looks along
    cam2world_R @ K^-1 [j + (b + 0.5) / s, i + (a + 0.5) / s, 1]; with s = 1 that is the
    pixel centre (j + 0.5, i + 0.5). Rays are in row-major order of the supersampled grid.
    """
    c2w, intr = camera.split_label(labels.float())
    k = camera.pixel_intrinsics(intr, resolution, resolution)  # [B, 3, 3]
    s = supersample
    coords = (torch.arange(resolution * s, dtype=torch.float32) + 0.5) / s  # [R*s]
    v, u = torch.meshgrid(coords, coords, indexing="ij")  # v: row (y), u: column (x)
    x = (u.reshape(1, -1) - k[:, 0, 2:3]) / k[:, 0, 0:1]  # [B, P]
    y = (v.reshape(1, -1) - k[:, 1, 2:3]) / k[:, 1, 1:2]
    rot = c2w[:, :3, :3]
    dirs = torch.stack([rot[:, None, i, 0] * x + rot[:, None, i, 1] * y + rot[:, None, i, 2] for i in range(3)], -1)
    return c2w[:, :3, 3], dirs


def raycast(heads: Heads, labels: torch.Tensor, resolution: int, supersample: int = SUPERSAMPLE,
            chunk: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Render heads [B] from cameras labels [B, 25] by analytic ray casting.

    Returns rgb [B, 3, H, W] in [0, 1], the foreground colour (not premultiplied; 1 where no
    sample hit), and mask [B, 1, H, W] in [0, 1], the fraction of samples that hit the head.
    Compositing on a background colour bg is rgb * mask + bg * (1 - mask).
    """
    rgb, mask, _ = _raycast_all(heads, labels, resolution, supersample, chunk)
    return rgb, mask


def raycast_depth(heads: Heads, labels: torch.Tensor, resolution: int, supersample: int = SUPERSAMPLE,
                  chunk: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """As `raycast`, but the geometry: mask [B, 1, H, W] and depth [B, 1, H, W], the camera-space z
    of the hit surface averaged over the pixel's hit samples (0 where none hit), as the Gaussian
    renderer's expected depth is."""
    _, mask, depth = _raycast_all(heads, labels, resolution, supersample, chunk)
    return mask, depth


def _raycast_all(heads: Heads, labels: torch.Tensor, resolution: int, supersample: int,
                 chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B = labels.shape[0]
    parts = []
    with single_thread(), torch.no_grad():
        for start in range(0, B, chunk):
            sl = slice(start, min(start + chunk, B))
            parts.append(_raycast_chunk(heads[sl], labels[sl], resolution, supersample))
    return tuple(torch.cat(x) for x in zip(*parts))  # type: ignore[return-value]


def _raycast_chunk(heads: Heads, labels: torch.Tensor, res: int, s: int) -> tuple[torch.Tensor, ...]:
    B, K = heads.centre.shape[:2]
    origin, dirs = camera_rays(labels, res, s)  # [B, 3], [B, P, 3]
    # Each ellipsoid's unit-sphere frame: q = M^T (x - c) with M = R diag(1/r). A ray x = o + t d
    # hits it where |o_l + t M^T d|^2 = 1, a quadratic a t^2 + 2 b t + c = 0 with
    # a = d^T (M M^T) d, b = d . (M o_l), c = |o_l|^2 - 1. Only a and b depend on the ray, and
    # through six products of d's components, so the [B, P, K] work stays small.
    m = heads.rot / heads.radii[:, :, None, :]  # [B, K, 3(world), 3(local)]: R_ij / r_j
    rel = origin[:, None, :] - heads.centre  # [B, K, 3]
    o_l = torch.stack([_dot(rel, m[..., j]) for j in range(3)], -1)  # [B, K, 3]
    w = torch.stack([_dot(m[..., i, :], o_l) for i in range(3)], -1)  # [B, K, 3] = M o_l
    d0, d1, d2 = (dirs[..., i : i + 1] for i in range(3))  # [B, P, 1] each
    # The six distinct entries of the symmetric M M^T, each [B, 1, K].
    qk = [_dot(m[..., i, :], m[..., j, :])[:, None] for i, j in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))]
    a = d0 * d0 * qk[0] + d1 * d1 * qk[1] + d2 * d2 * qk[2] + 2 * (d0 * d1 * qk[3] + d0 * d2 * qk[4] + d1 * d2 * qk[5])
    b = d0 * w[:, None, :, 0] + d1 * w[:, None, :, 1] + d2 * w[:, None, :, 2]  # [B, P, K]
    c = (_dot(o_l, o_l) - 1.0)[:, None]  # [B, 1, K]
    disc = b * b - a * c
    hit = (disc > 0) & heads.active[:, None, :]
    sq = torch.sqrt(disc.clamp_min(0.0))
    t_near, t_far = (-b - sq) / a, (-b + sq) / a
    # Clip planes (the hair cap): the near surface may be clipped away while the far one (the
    # inside of the cap) is still there.
    n_o = _dot(heads.clip_n, origin[:, None, :])[:, None, :]  # [B, 1, K]
    cn = heads.clip_n[:, None]  # [B, 1, K, 3]
    n_d = d0 * cn[..., 0] + d1 * cn[..., 1] + d2 * cn[..., 2]  # [B, P, K]
    d_clip = heads.clip_d[:, None, :]
    near_ok = hit & (t_near > 1e-4) & (n_o + t_near * n_d >= d_clip)
    far_ok = hit & (t_far > 1e-4) & (n_o + t_far * n_d >= d_clip)
    inf = torch.full_like(t_near, float("inf"))
    t = torch.where(near_ok, t_near, torch.where(far_ok, t_far, inf))  # [B, P, K]
    t_best, k_best = t.min(dim=-1)  # [B, P]
    fg = torch.isfinite(t_best)
    t_best = t_best.where(fg, 0.0)

    # Normal of the hit ellipsoid: the gradient of |q|^2 in world coordinates, M q.
    bi = torch.arange(B)[:, None]
    m_hit, o_hit = m[bi, k_best], o_l[bi, k_best]  # [B, P, 3, 3], [B, P, 3]
    d_hit = torch.stack([_dot(dirs, m_hit[..., j]) for j in range(3)], -1)  # [B, P, 3] = M^T d
    q = o_hit + t_best[..., None] * d_hit
    normal = torch.stack([_dot(m_hit[..., i, :], q) for i in range(3)], -1)  # [B, P, 3]
    normal = torch.nn.functional.normalize(normal, dim=-1)
    # Seen from inside (the far side of a clipped cap) the surface faces the camera the other way.
    normal = torch.where((_dot(normal, dirs) > 0)[..., None], -normal, normal)
    shade = AMBIENT + DIFFUSE * _dot(normal, LIGHT).clamp_min(0.0)  # [B, P]
    albedo = heads.colour[bi, k_best]  # [B, P, 3]
    colour = (albedo * shade[..., None]).clamp(0, 1) * fg[..., None]  # [B, P, 3]

    # Average the s x s samples of each pixel: coverage is the mask, the hit samples' mean the colour.
    cov = fg.float().reshape(B, res, s, res, s).mean(dim=(2, 4))  # [B, H, W]
    col_sum = colour.reshape(B, res, s, res, s, 3).sum(dim=(2, 4))  # [B, H, W, 3]
    n_hit = cov * (s * s)
    rgb = torch.where(n_hit[..., None] > 0, col_sum / n_hit.clamp_min(1.0)[..., None], torch.ones_like(col_sum))
    # Directions have camera-space z = 1, so the ray parameter t is the camera-space depth.
    depth = (t_best * fg).reshape(B, res, s, res, s).sum(dim=(2, 4)) / n_hit.clamp_min(1.0)
    return rgb.permute(0, 3, 1, 2).contiguous(), cov[:, None], depth[:, None]


def render_identity(seed: int, identity: int, labels: torch.Tensor, resolution: int,
                    supersample: int = SUPERSAMPLE) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground truth of `identity` (under `seed`) from cameras labels [B, 25].

    Returns rgb [B, 3, H, W] in [0, 1] (foreground colour, not premultiplied) and mask
    [B, 1, H, W] in [0, 1], on the labels' device. The dataset's images are
    round(255 * (rgb * mask + 1 - mask)), its masks round(255 * mask).
    """
    labels = torch.as_tensor(labels)
    device = labels.device
    labels = labels.detach().to("cpu", torch.float32).reshape(-1, camera.LABEL_DIM)
    head, _ = sample_head(seed, identity)
    rgb, mask = raycast(Heads.stack([head] * labels.shape[0]), labels, resolution, supersample)
    return rgb.to(device), mask.to(device)  # rendered on the CPU, returned where the labels live


def render_heads(seed: int, identities: list[int], labels: torch.Tensor, resolution: int,
                 supersample: int = SUPERSAMPLE) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground truth of one identity per camera: identities [B] (under `seed`), labels [B, 25].

    Returns rgb [B, 3, H, W] and mask [B, 1, H, W] on the CPU, as `render_identity`: poses
    outside the dataset's (the metrics' novel views) render as well as any other.
    """
    labels = torch.as_tensor(labels).detach().to("cpu", torch.float32).reshape(-1, camera.LABEL_DIM)
    if len(identities) != len(labels):
        raise ValueError(f"{len(identities)} identities for {len(labels)} cameras")
    heads = {i: sample_head(seed, i)[0] for i in set(identities)}
    return raycast(Heads.stack([heads[i] for i in identities]), labels, resolution, supersample)


def render_heads_depth(seed: int, identities: list[int], labels: torch.Tensor, resolution: int,
                       supersample: int = SUPERSAMPLE) -> tuple[torch.Tensor, torch.Tensor]:
    """The geometry of one identity per camera: mask [B, 1, H, W] and depth [B, 1, H, W] (see
    `raycast_depth`), on the CPU."""
    labels = torch.as_tensor(labels).detach().to("cpu", torch.float32).reshape(-1, camera.LABEL_DIM)
    if len(identities) != len(labels):
        raise ValueError(f"{len(identities)} identities for {len(labels)} cameras")
    heads = {i: sample_head(seed, i)[0] for i in set(identities)}
    return raycast_depth(Heads.stack([heads[i] for i in identities]), labels, resolution, supersample)


def to_uint8_on_white(rgb: torch.Tensor, mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """rgb [B, 3, H, W], mask [B, 1, H, W] -> RGB on white [B, H, W, 3] and mask [B, H, W], uint8."""
    on_white = rgb * mask + (1 - mask)
    img = (on_white * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    m = (mask[:, 0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return img, m


def _params(identities: int, views: int, resolution: int, seed: int, yaw_std: float, yaw_limit: float) -> dict:
    # The pose spread is recorded only when it is not the default: datasets written before it
    # was a setting keep matching.
    spread = {} if (yaw_std, yaw_limit) == (YAW_STD, YAW_LIMIT) else {"yaw_std": yaw_std, "yaw_limit": yaw_limit}
    return {"identities": identities, "views": views, "resolution": resolution, "seed": seed,
            "supersample": SUPERSAMPLE, "version": VERSION, **spread}


def _write_dataset(out: Path, identities: int, views: int, resolution: int, seed: int, yaw_std: float = YAW_STD,
                   yaw_limit: float = YAW_LIMIT, batch: int = 64) -> int:  # fmt: skip
    res_dir, mask_dir = out / str(resolution), out / "mask"
    res_dir.mkdir(parents=True)
    mask_dir.mkdir()
    labels_json, id_json, attr_rows = [], {}, []
    pending_heads: list[Heads] = []
    pending_labels: list[torch.Tensor] = []
    pending_names: list[str] = []

    def flush() -> None:
        if not pending_names:
            return
        rgb, mask = raycast(Heads.stack(pending_heads), torch.stack(pending_labels), resolution)
        imgs, masks = to_uint8_on_white(rgb, mask)
        for name, im, mk in zip(pending_names, imgs, masks):
            Image.fromarray(im, "RGB").save(res_dir / name)
            Image.fromarray(mk, "L").save(mask_dir / name)
        pending_heads.clear()
        pending_labels.clear()
        pending_names.clear()

    for ident in range(identities):
        head, attrs = sample_head(seed, ident)
        labels = sample_views(seed, ident, views, yaw_std, yaw_limit)
        yaw, pitch = camera.yaw_pitch(labels)
        for v in range(views):
            idx = ident * views + v
            name = f"{idx:05d}.png"
            key = f"{resolution}/{name}"
            labels_json.append([key, [float(x) for x in labels[v].tolist()]])
            id_json[key] = ident
            attr_rows.append({"file": key, "identity": ident, **attrs,
                              "yaw": round(float(yaw[v]), 4), "pitch": round(float(pitch[v]), 4)})
            pending_heads.append(head)
            pending_labels.append(labels[v])
            pending_names.append(name)
            if len(pending_names) >= batch:
                flush()
    flush()

    params = _params(identities, views, resolution, seed, yaw_std, yaw_limit)
    # "background": the loader un-mixes white from the soft mask edges before pasting onto another colour.
    meta = {"labels": labels_json, "identities": id_json, "background": "white", "synthetic": params}
    (out / "dataset.json").write_text(json.dumps(meta))
    with open(out / "attributes.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(attr_rows[0]))
        w.writeheader()
        w.writerows(attr_rows)
    # Written last: its presence marks a complete dataset.
    (out / "synthetic.json").write_text(json.dumps(params, indent=1))
    return len(labels_json)


def generate_synthetic(out: Path, identities: int = 256, views: int = 4, resolution: int = 64, seed: int = 0,
                       yaw_std: float = YAW_STD, yaw_limit: float = YAW_LIMIT) -> Path:  # fmt: skip
    """Write the synthetic heads to `out` in the FFHQC layout (skipped if already there); returns `out`.

    A folder holding a complete synthetic dataset with the same parameters is kept as is; one with
    other parameters (or an older head model) is replaced. A folder holding anything else is
    refused rather than overwritten. The files are built in a temporary folder beside `out` and
    moved into place at the end, so an interrupted run never leaves a half-written dataset.
    """
    out = Path(out)
    for name, value, low in (("identities", identities, 1), ("views", views, 1), ("resolution", resolution, 4),
                             ("seed", seed, 0)):
        if int(value) != value or value < low:
            raise ValueError(f"synthetic heads: {name}={value!r} must be an integer >= {low}")
    if not (yaw_std > 0 and 0 < yaw_limit <= MAX_YAW_LIMIT):
        raise ValueError(f"synthetic heads: yaw_std={yaw_std!r} must be > 0 and yaw_limit={yaw_limit!r} in "
                         f"(0, {MAX_YAW_LIMIT:.4f}] (radians)")
    params = _params(identities, views, resolution, seed, yaw_std, yaw_limit)
    info_file = out / "synthetic.json"
    if out.exists():
        if info_file.is_file() and (out / "dataset.json").is_file():
            try:
                if json.loads(info_file.read_text()) == params:
                    return out
            except json.JSONDecodeError:
                pass
        elif out.is_dir() and any(out.iterdir()):
            raise ValueError(f"{out}: exists and is not a synthetic-heads dataset; refusing to overwrite it")
        elif not out.is_dir():
            raise ValueError(f"{out}: exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _write_dataset(tmp / "data", identities, views, resolution, seed, yaw_std, yaw_limit)
        if out.exists():
            shutil.rmtree(out)  # an empty folder or an outdated synthetic dataset (checked above)
        (tmp / "data").rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_info(data: str | Path) -> dict:
    """Generation parameters of a synthetic-heads dataset (folder or .zip): seed, identities, views, ...

    Raises ValueError for any other dataset.
    """
    data = Path(data)
    text = None
    if data.is_dir():
        for name in ("synthetic.json", "dataset.json"):
            if (data / name).is_file():
                text = (data / name).read_text()
                break
    elif data.is_file() and zipfile.is_zipfile(data):
        with zipfile.ZipFile(data) as z:
            names = set(z.namelist())
            for name in ("synthetic.json", "dataset.json"):
                if name in names:
                    text = z.read(name).decode()
                    break
    if text is None:
        raise ValueError(f"{data}: not a synthetic-heads dataset (no synthetic.json or dataset.json)")
    try:
        info = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{data}: unreadable synthetic.json/dataset.json: {e}") from e
    if isinstance(info, dict) and "labels" in info:  # dataset.json: the parameters sit under "synthetic"
        info = info.get("synthetic")
    if not isinstance(info, dict) or "seed" not in info or "identities" not in info:
        raise ValueError(f"{data}: not a synthetic-heads dataset (no generation parameters with seed and identities)")
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write the built-in synthetic multi-view heads in the FFHQC layout.")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--identities", type=int, default=256)
    p.add_argument("--views", type=int, default=4, help="images per identity")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--yaw-std", type=float, default=YAW_STD, help="yaw spread, radians (0.3: FFHQ-like)")
    p.add_argument("--yaw-limit", type=float, default=YAW_LIMIT, help="yaw clamp, radians")
    args = p.parse_args(argv)
    start = time.perf_counter()
    try:
        generate_synthetic(args.out, args.identities, args.views, args.resolution, args.seed, args.yaw_std,
                           args.yaw_limit)  # fmt: skip
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    count = args.identities * args.views
    print(f"{count} images ({args.identities} identities x {args.views} views, {args.resolution}px) "
          f"in {args.out} in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
