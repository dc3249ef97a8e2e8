"""Background colours for real and rendered images.

CGS-GAN pastes every real image onto its own random uniform colour (with the foreground mask)
and renders every fake on one too, so the discriminator cannot tell reals from fakes by the
background; snapshots and metrics use white.
"""

from __future__ import annotations

import torch

SCHEMES = ("random", "white", "black")


def sample_backgrounds(scheme: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Background colours [n, 3] in [0, 1]: "random" (uniform per item), "white" or "black".

    Only "random" draws from `generator`, so switching schemes does not shift other random streams
    more than necessary.
    """
    if scheme == "random":
        return torch.rand(n, 3, generator=generator)
    if scheme == "white":
        return torch.ones(n, 3)
    if scheme == "black":
        return torch.zeros(n, 3)
    raise ValueError(f"unknown background scheme {scheme!r}; expected one of {SCHEMES}")


def composite(image01: torch.Tensor, mask: torch.Tensor, colors: torch.Tensor) -> torch.Tensor:
    """Paste images onto uniform colours: image01 [B, 3, H, W] in [0, 1], mask [B, 1, H, W] in [0, 1]
    (1 = foreground), colors [B, 3] (or [3] for all) -> [B, 3, H, W] in [0, 1].
    """
    colors = colors.to(device=image01.device, dtype=image01.dtype)
    if colors.dim() == 1:
        colors = colors.expand(image01.shape[0], 3)
    mask = mask.to(dtype=image01.dtype)
    return image01 * mask + colors[:, :, None, None] * (1 - mask)
