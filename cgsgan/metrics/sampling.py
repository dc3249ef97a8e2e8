"""Images and features for the distribution metrics: generated (from a generator-like callable)
and real (from a dataset), each composited on white or on given solid colours.

Every function takes a *generator-like callable* `gen(z [B, z_dim], c [B, 25]) -> Gaussians`
(or a `GeneratorOutput`) with a `z_dim` attribute, so a hand-built generator can be tested exactly
like the real one; `as_generator(G, psi)` adapts a `cgsgan.generator.Generator`.
"""

from __future__ import annotations

from typing import Iterator, Protocol, Sequence

import torch

from cgsgan import camera
from cgsgan.data.backgrounds import composite
from cgsgan.data.dataset import unmix
from cgsgan.gaussians import Gaussians
from cgsgan.generator import Generator, GeneratorOutput
from cgsgan.metrics.features import FeatureExtractor
from cgsgan.render import RenderOutput, render


class GaussianGenerator(Protocol):
    """z [B, z_dim], camera labels c [B, 25] -> Gaussians [B, N] (or a GeneratorOutput)."""

    z_dim: int

    def __call__(self, z: torch.Tensor, c: torch.Tensor) -> Gaussians | GeneratorOutput: ...


class GeneratorFn:
    """A `Generator` as a GaussianGenerator: no grad, truncation psi, inputs moved to its device."""

    def __init__(self, G: Generator, psi: float = 1.0) -> None:
        self.G, self.psi = G, psi
        self.z_dim = G.cfg.z_dim
        self.camera_conditioned = G.camera_conditioned
        self.resolution = G.resolution

    @torch.no_grad()
    def __call__(self, z: torch.Tensor, c: torch.Tensor) -> Gaussians:
        device = next(self.G.parameters()).device
        return self.G(z.to(device), c.to(device), psi=self.psi).gaussians


def as_generator(G: Generator | GaussianGenerator, psi: float = 1.0) -> GaussianGenerator:
    return GeneratorFn(G, psi) if isinstance(G, Generator) else G


def gaussians_of(out: Gaussians | GeneratorOutput) -> Gaussians:
    return out.gaussians if isinstance(out, GeneratorOutput) else out


def render_labels(g: Gaussians, labels: torch.Tensor, resolution: int, backend: str,
                  background: torch.Tensor | None = None) -> RenderOutput:
    """Render Gaussians [B] from labels [B, 25] on white, or on background colours [B, 3] in [0, 1]."""
    dev = g.means.device
    bg = None if background is None else background.to(dev, g.means.dtype)
    return render(g, labels.to(dev, g.means.dtype), resolution, background=bg, backend=backend)  # type: ignore[arg-type]


def pick(pool: torch.Tensor, n: int, rng: torch.Generator) -> torch.Tensor:
    return pool[torch.randint(len(pool), (n,), generator=rng)]


# ---------------------------------------------------------------------------------------- generated
def iter_generated(
    gen: GaussianGenerator,
    labels: torch.Tensor,
    num: int,
    resolution: int,
    condition: str = "own",
    seed: int = 0,
    batch_size: int = 64,
    backend: str = "auto",
    poses: torch.Tensor | None = None,
    backgrounds: torch.Tensor | None = None,
) -> Iterator[torch.Tensor]:
    """Batches of generated images [b, 3, H, W] in [-1, 1], num in total.

    Cameras are drawn from `labels` [M, 25], or taken from `poses` [num, 25] (sample j seen from
    poses[j]). condition="own": G(z, c) seen from c (FID); "frontal": G(z, frontal) seen from c
    (FID3D). z and the drawn cameras come from one seeded stream whose draws depend neither on
    `condition` nor on `poses`, so every setting sees the same latents: the same heads.
    backgrounds [num, 3]: a solid colour per sample (white when None).
    """
    if condition not in ("own", "frontal"):
        raise ValueError(f"condition must be 'own' or 'frontal', got {condition!r}")
    for name, t in (("poses", poses), ("backgrounds", backgrounds)):
        if t is not None and len(t) < num:
            raise ValueError(f"{name}: {len(t)} rows for {num} samples")
    rng = torch.Generator().manual_seed(seed)
    for start in range(0, num, batch_size):
        b = min(batch_size, num - start)
        z = torch.randn(b, gen.z_dim, generator=rng)
        cams = pick(labels, b, rng)
        if poses is not None:
            cams = poses[start : start + b].to(cams.dtype)
        cond = cams if condition == "own" else camera.frontal_label(b, dtype=cams.dtype)
        bg = None if backgrounds is None else backgrounds[start : start + b]
        yield render_labels(gaussians_of(gen(z, cond)), cams, resolution, backend, bg).image.detach()


@torch.no_grad()
def generated_features(
    gen: GaussianGenerator,
    extractor: FeatureExtractor,
    labels: torch.Tensor,
    num: int,
    resolution: int,
    condition: str = "own",
    seed: int = 0,
    batch_size: int = 64,
    backend: str = "auto",
    poses: torch.Tensor | None = None,
    backgrounds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Features [num, dim] of generated images (see iter_generated), extracted batch by batch."""
    batches = iter_generated(gen, labels, num, resolution, condition, seed, batch_size, backend, poses, backgrounds)
    return torch.cat([extractor(im) for im in batches])


# ---------------------------------------------------------------------------------------- real
def white_composite(image: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """image [..., 3, H, W] in [-1, 1], mask [..., 1, H, W] in [0, 1] -> on white, in [-1, 1]."""
    if mask is None:
        return image
    return image * mask + (1 - mask)  # white is +1 in [-1, 1]


def real_images(dataset, indices: Sequence[int], colours: torch.Tensor | None = None) -> torch.Tensor:
    """Dataset items `indices` on white, or on colours [n, 3] in [0, 1] -> [n, 3, H, W] in [-1, 1].

    Items of a dataset that returns images as stored (ImageDataset background="off") are pasted
    with their mask; when the dataset declares the colour its images were stored on (the synthetic
    heads: white), that colour is first un-mixed from the soft mask edges. A dataset that already
    composites (background="white", ...) is taken as it is, and cannot be repainted.
    """
    items = [dataset[int(i)] for i in indices]
    images = torch.stack([it["image"] for it in items]).float()
    repaintable = (getattr(dataset, "background", "off") == "off" and items[0].get("mask") is not None
                   and getattr(dataset, "has_masks", True))
    if not repaintable:
        if colours is not None:
            raise ValueError(f"{getattr(dataset, 'path', 'the dataset')}: real images on coloured backgrounds (fid_bg) "
                             "need foreground masks (a mask/ folder) and background='off'")
        return images
    masks = torch.stack([it["mask"] for it in items]).float()
    masks = masks if masks.dim() == 4 else masks[:, None]
    if colours is None:
        if getattr(dataset, "stored_background", None) is None:
            return white_composite(images, masks)
        colours = torch.ones(len(items), 3)
    fg = (images + 1) / 2
    stored = getattr(dataset, "stored_background", None)
    if stored is not None:
        fg = unmix(fg, masks, stored)
    return composite(fg, masks, colours) * 2 - 1


@torch.no_grad()
def real_features(dataset, extractor: FeatureExtractor, num: int, seed: int = 0, batch_size: int = 64,
                  colours: torch.Tensor | None = None) -> torch.Tensor:
    """Features [min(num, len), dim] of a seeded random subset of the dataset (all of it if smaller).

    colours [n, 3]: the i-th image of the subset is pasted on colours[i] (white when None)."""
    n = min(num, len(dataset))
    if n < 2:
        raise ValueError(f"the dataset has {len(dataset)} images; the metrics need at least 2")
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    return torch.cat([
        extractor(real_images(dataset, idx[i : i + batch_size], None if colours is None else colours[i : i + batch_size]))
        for i in range(0, n, batch_size)
    ])
