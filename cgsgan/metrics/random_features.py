"""`RandomFeatures`: a small convolutional network with fixed random weights (seeded).

A cheap, deterministic embedding for tracking training progress on CPU without any trained
network. Its numbers are NOT comparable with Inception FID and are named "*_rand".
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cgsgan.metrics.features import in_batches


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
