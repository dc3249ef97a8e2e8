"""Frechet distance between Gaussian fits of two feature sets, and a cheap fixed feature network.

`RandomFeatures` is a small convolutional network with fixed random weights (seeded): a cheap,
offline, deterministic embedding for tracking training progress on CPU. Its numbers are NOT
comparable with Inception FID and are labelled "FD-rand".
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cgsgan.metrics.features import in_batches


def gaussian_stats(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """features [N, D] -> (mean [D], covariance [D, D]) in float64."""
    x = features.detach().double().cpu().numpy()
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)).

    tr((C1 C2)^(1/2)) is the sum of square roots of the eigenvalues of C1 C2, which equal those of
    the symmetric PSD matrix sqrt(C1) C2 sqrt(C1): computed that way it is stable and real.
    """
    w1, v1 = np.linalg.eigh(cov1)
    sqrt1 = (v1 * np.sqrt(np.clip(w1, 0, None))) @ v1.T
    eig = np.linalg.eigvalsh(sqrt1 @ cov2 @ sqrt1)
    tr_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)


class RandomFeatures(nn.Module):
    """Fixed random conv net: images [N, 3, H, W] in [-1, 1] -> features [N, 2 * dim]
    (per-channel mean and std of the last of `dim` channels). A `FeatureExtractor` (suffix "rand")."""

    suffix = "rand"

    def __init__(self, dim: int = 64, seed: int = 0, size: int = 64, batch_size: int = 256) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        chans = [3, 32, 64, dim]
        self.size = size
        self.dim = 2 * dim  # output width (FeatureExtractor.dim)
        self.batch_size = batch_size
        self.weights = [torch.randn(chans[i + 1], chans[i], 3, 3, generator=g) / (3 * chans[i] ** 0.5) for i in range(3)]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Chunked so thousands of images never hold [N, 32, size, size] activations at once.
        return in_batches(self._features, images, self.batch_size)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images.float().cpu(), size=(self.size, self.size), mode="area")
        for w in self.weights:
            x = F.avg_pool2d(F.leaky_relu(F.conv2d(x, w, padding=1), 0.2), 2)
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)
