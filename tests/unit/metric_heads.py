"""Hand-built Gaussian generators whose answer to the claim metrics is known, built from the
synthetic heads themselves (no training):

    SurfaceHeads   the synthetic head of an identity as flat Gaussians (surfels) on its ellipsoids'
                   visible surface, coloured as the ray caster shades them: a true 3D head (the good
                   generator), whose alpha matches the ground truth's (IoU >= 0.95 at every yaw)
    Billboard      a flat plane textured with the identity's frontal ground-truth render; facing=True
                   turns the plane to face the conditioning camera (a camera-dependent generator)
    WithFloaters   any of them plus white semi-transparent Gaussians in a layer behind the head

Each maps z [B, z_dim] to one of the dataset's identities (a fixed function of z), so its samples
are drawn from the same population of heads as the dataset.
"""

from __future__ import annotations

import math

import torch

from cgsgan import camera
from cgsgan.data import synthetic
from cgsgan.gaussians import Gaussians, rgb_to_sh0
from cgsgan.metrics.geometry import plane_points

Z_DIM = 4
MIN_PART_POINTS = 96
# A surfel is at most this part of its part's size wide, and sits at most this part
# of it inside the surface: the eyes (radius ~0.025, showing 0.01 of it) sank behind the skull
# under the full inset (0.012 at 64 px) and lost their whites.
PART_FRACTION = 0.3


def identity_of(z: torch.Tensor, num_identities: int) -> list[int]:
    return ((z[:, 0].abs() * 1e4).long() % num_identities).tolist()


def _gaussians(means: torch.Tensor, rgb: torch.Tensor, opacity: torch.Tensor, scale: float) -> Gaussians:
    """means [B, N, 3], rgb [B, N, 3] in [0, 1], opacity [B, N] in (0, 1) -> isotropic Gaussians."""
    B, N = means.shape[:2]
    return Gaussians(means=means, log_scales=torch.full((B, N, 3), math.log(scale)),
                     quats=torch.tensor([1.0, 0, 0, 0]).expand(B, N, 4).clone(),
                     opacity_logits=torch.logit(opacity.clamp(1e-4, 1 - 1e-4)), sh0=rgb_to_sh0(rgb))


def surface_points(head: synthetic.Heads, num: int, seed: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points [n, 3] on the visible surface of one head (K ellipsoids), their outward normals [n, 3],
    shaded colours [n, 3] and two sizes [n, 2] of the part each lies on: for a surfel's width and for its inset.

    Points are spread over the active ellipsoids by area; a point inside another ellipsoid or cut
    away by its clip plane is dropped, so what is left is the outer surface the ray caster sees.
    """
    g = torch.Generator().manual_seed(seed)
    active = head.active.nonzero()[:, 0]
    r = head.radii[active]
    # Thomsen's approximation of an ellipsoid's area (p = 1.6); 1.6x the points, as about a third are hidden
    ab, ac, bc = r[:, 0] * r[:, 1], r[:, 0] * r[:, 2], r[:, 1] * r[:, 2]
    area = 4 * math.pi * ((ab**1.6 + ac**1.6 + bc**1.6) / 3) ** (1 / 1.6)
    # at least MIN_PART_POINTS on a part: the eyes and irises are a few pixels wide, and a handful of
    # surfels made them blobs
    counts = (area / area.sum() * num * 1.6).long().clamp_min(MIN_PART_POINTS)
    pts, normals, cols, sizes = [], [], [], []
    for k, n in zip(active.tolist(), counts.tolist()):
        u = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
        rot, rad = head.rot[k], head.radii[k]
        p = (u * rad) @ rot.T + head.centre[k]  # [n, 3]
        normal = torch.nn.functional.normalize((u / rad) @ rot.T, dim=-1)
        keep = (p @ head.clip_n[k]) >= head.clip_d[k]
        for j in active.tolist():  # hidden inside another part (where that part is not cut away)
            if j == k:
                continue
            q = (p - head.centre[j]) @ head.rot[j] / head.radii[j]
            keep &= (q.pow(2).sum(-1) > 1.0) | ((p @ head.clip_n[j]) < head.clip_d[j])
        shade = synthetic.AMBIENT + synthetic.DIFFUSE * (normal @ synthetic.LIGHT).clamp_min(0)
        pts.append(p[keep])
        normals.append(normal[keep])
        cols.append((head.colour[k] * shade[keep, None]).clamp(0, 1))
        # width and depth: the part's largest semi-axis (an iris's eyeball's, or the iris,
        # sunk less than the eyeball, grows over the eye's white)
        part = synthetic.PARTS[k]
        deep = head.radii[synthetic.PARTS.index(part.replace("iris", "eye"))] if part.startswith("iris") else rad
        sizes.append(torch.stack([rad.max(), deep.max()]).expand(int(keep.sum()), 2))
    return torch.cat(pts), torch.cat(normals), torch.cat(cols), torch.cat(sizes)


def quat_from_z(n: torch.Tensor) -> torch.Tensor:
    """Unit vectors [..., 3] -> quaternions (w, x, y, z) of the shortest rotation taking +z to them."""
    q = torch.stack([1 + n[..., 2], -n[..., 1], n[..., 0], torch.zeros_like(n[..., 0])], -1)
    flip = torch.tensor([0.0, 1.0, 0.0, 0.0]).expand_as(q)  # n = -z: half a turn about x
    return torch.nn.functional.normalize(torch.where((1 + n[..., 2:3]) < 1e-6, flip, q), dim=-1)


class SurfaceHeads:
    """The synthetic heads as 3D Gaussians: the same head from every camera.

    Each point is a surfel: a Gaussian `scale` wide in the surface's tangent plane and `thickness`
    across it, so the silhouette ends where the surface does (round Gaussians would pad it by about
    a Gaussian's width all round). The rasterizer widens every splat by its anti-aliasing filter
    (0.3 px^2), which pads the silhouette of layered surfels by about `inset_px` at `resolution`:
    the surfels sit that far inside the surface, as a generator fitting the images learns to put
    them (small parts less: PART_FRACTION). Heads with fewer visible points are padded with
    transparent ones.
    """

    z_dim = Z_DIM

    def __init__(self, seed: int, num_identities: int, points: int = 6000, scale: float = 0.009,
                 thickness: float = 0.0015, resolution: int = 64, inset_px: float = 1.2) -> None:
        self.num_identities = num_identities
        with synthetic.single_thread():  # many small ops: threads only stall on a busy machine
            clouds = [surface_points(synthetic.sample_head(seed, i)[0], points, seed=i) for i in range(num_identities)]
        inset = inset_px * camera.RADIUS / (camera.FOCAL * resolution)  # a pixel's footprint at the head
        n = max(len(p) for p, _, _, _ in clouds)

        def pad(x: torch.Tensor, value: float = 0.0) -> torch.Tensor:
            return torch.cat([x, x.new_full((n - len(x), *x.shape[1:]), value)])

        def tangent_scales(size: torch.Tensor) -> torch.Tensor:  # [m, 2] -> log scales [m, 3]
            wide = (PART_FRACTION * size[:, 0]).clamp_max(scale)
            return torch.stack([wide, wide, torch.full_like(wide, thickness)], -1).log()

        self.means = torch.stack([pad(p - (PART_FRACTION * size[:, 1:]).clamp_max(inset) * nrm)
                                  for p, nrm, _, size in clouds])  # [I, n, 3]
        self.quats = torch.stack([pad(quat_from_z(nrm)) for _, nrm, _, _ in clouds])
        self.rgb = torch.stack([pad(c) for _, _, c, _ in clouds])
        self.opacity = torch.stack([pad(torch.full((len(p),), 0.99)) for p, _, _, _ in clouds])
        self.log_scales = torch.stack([pad(tangent_scales(size), math.log(scale)) for _, _, _, size in clouds])

    def __call__(self, z: torch.Tensor, c: torch.Tensor) -> Gaussians:
        ids = identity_of(z, self.num_identities)
        return Gaussians(means=self.means[ids], log_scales=self.log_scales[ids],
                         quats=self.quats[ids], opacity_logits=torch.logit(self.opacity[ids].clamp(1e-4, 1 - 1e-4)),
                         sh0=rgb_to_sh0(self.rgb[ids]))


class Billboard:
    """A plane textured with the frontal ground-truth render of the identity.

    facing=False: the plane stays where the frontal camera sees it (a flat head, edge-on from the
    side). facing=True: the plane is rebuilt facing the conditioning camera, so every camera sees
    the frontal picture (the output depends on the camera).
    """

    z_dim = Z_DIM

    def __init__(self, seed: int, num_identities: int, facing: bool = False, res: int = 32) -> None:
        self.num_identities, self.facing, self.res = num_identities, facing, res
        self.camera_conditioned = facing
        front = camera.frontal_label(num_identities)
        rgb, mask = synthetic.render_heads(seed, list(range(num_identities)), front, res)
        self.rgb = rgb.flatten(2).transpose(1, 2)  # [I, res * res, 3]
        self.alpha = mask.flatten(1) * 0.99  # [I, res * res]
        self.frontal_plane = plane_points(front[0], res)
        # the footprint of a pixel on the plane: 2.7 / (focal * res), as a Gaussian's std
        self.scale = 0.6 * camera.RADIUS / (camera.FOCAL * res)

    def __call__(self, z: torch.Tensor, c: torch.Tensor) -> Gaussians:
        ids = identity_of(z, self.num_identities)
        if self.facing:
            means = torch.stack([plane_points(label.float(), self.res) for label in c])
        else:
            means = self.frontal_plane.expand(len(ids), -1, -1)
        return _gaussians(means, self.rgb[ids], self.alpha[ids], self.scale)


class WithFloaters:
    """`base` plus `count` white, semi-transparent Gaussians in a layer behind the head (z -0.32 to
    -0.36; the back of the hair is at most 0.25 behind the centre), spread sideways and up and down
    beyond its outline: no camera in front of the head's profile (yaw within +-90 degrees) sees
    one over the head, so on white they are unseen and on colours they show around it. (A shell
    0.24-0.30 from the centre covered the back of the head in side views.)"""

    def __init__(self, base, count: int = 150, opacity: float = 0.6, scale: float = 0.03, seed: int = 0) -> None:
        self.base, self.z_dim = base, base.z_dim
        g = torch.Generator().manual_seed(seed)
        u = torch.nn.functional.normalize(torch.randn(count, 3, generator=g), dim=-1)
        lateral = u[:, :2] * (0.24 + 0.06 * torch.rand(count, 1, generator=g))  # as far out as the old shell
        depth = -(0.32 + 0.04 * torch.rand(count, 1, generator=g))
        self.means = torch.cat([lateral, depth], -1)
        self.opacity, self.scale = opacity, scale

    def __call__(self, z: torch.Tensor, c: torch.Tensor) -> Gaussians:
        head = self.base(z, c)
        B, n = len(z), len(self.means)
        extra = _gaussians(self.means.expand(B, n, 3), torch.ones(B, n, 3), torch.full((B, n), self.opacity), self.scale)
        return Gaussians(*(torch.cat([getattr(head, f), getattr(extra, f)], 1)
                           for f in ("means", "log_scales", "quats", "opacity_logits", "sh0")))


class BallOfHair:
    """A hair-coloured ball about as big as a head with its hair: deep and round from every side,
    what crude depth measures (width at yaw 90 over width at yaw 0, front-to-back extent) take for
    a head. Surfels on a sphere, as SurfaceHeads's."""

    z_dim = Z_DIM

    def __init__(self, radius: float = 0.2, points: int = 4000, scale: float = 0.012, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        n = torch.nn.functional.normalize(torch.randn(points, 3, generator=g), dim=-1)
        self.means, self.quats = n * radius, quat_from_z(n)
        self.log_scales = torch.tensor([scale, scale, scale / 8]).log().expand(points, 3)

    def __call__(self, z: torch.Tensor, c: torch.Tensor) -> Gaussians:
        B, n = len(z), len(self.means)
        rgb = torch.tensor([0.3, 0.18, 0.1]).expand(B, n, 3)
        return Gaussians(means=self.means.expand(B, n, 3).clone(), log_scales=self.log_scales.expand(B, n, 3).clone(),
                         quats=self.quats.expand(B, n, 4).clone(), opacity_logits=torch.full((B, n), 4.6),
                         sh0=rgb_to_sh0(rgb))
