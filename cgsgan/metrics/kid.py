"""Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel, averaged over subsets.

    k(x, y) = (x . y / d + 1)^3
    MMD^2_u = sum_{i!=j} k(x_i, x_j) / (m (m-1)) + sum_{i!=j} k(y_i, y_j) / (m (m-1)) - 2 sum_{i,j} k(x_i, y_j) / m^2

The estimator is unbiased, so for two samples of one distribution it scatters around 0 and can
be slightly negative; averaging over random subsets of size m (Binkowski et al. 2018) reduces
its variance and bounds the cost to O(subsets * m^2 * d).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _as_array(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {x.shape}")
    return x


@dataclass(frozen=True)
class KID:
    """The unbiased KID estimate (mean over subsets) and its spread (std over subsets)."""

    mean: float
    std: float


def kid_subsets(
    real: torch.Tensor | np.ndarray,
    fake: torch.Tensor | np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """Unbiased MMD^2 of each of `num_subsets` random subsets [num_subsets] of real [N, D] and fake [M, D]."""
    x, y = _as_array(fake), _as_array(real)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature widths differ: {x.shape[1]} vs {y.shape[1]}")
    m = min(len(x), len(y), subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per side, got {len(y)} real and {len(x)} fake")
    d = x.shape[1]
    rng = np.random.default_rng(seed)
    out = np.empty(num_subsets)
    for i in range(num_subsets):
        xs = x[rng.choice(len(x), m, replace=False)]
        ys = y[rng.choice(len(y), m, replace=False)]
        kxx = (xs @ xs.T / d + 1) ** 3  # [m, m]
        kyy = (ys @ ys.T / d + 1) ** 3
        kxy = (xs @ ys.T / d + 1) ** 3
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        out[i] = within - 2 * kxy.sum() / (m * m)
    return out


def kid(real: torch.Tensor | np.ndarray, fake: torch.Tensor | np.ndarray, num_subsets: int = 100,
        subset_size: int = 1000, seed: int = 0) -> KID:
    """KID with its spread over subsets (Binkowski et al. report the same pair)."""
    values = kid_subsets(real, fake, num_subsets, subset_size, seed)
    return KID(float(values.mean()), float(values.std()))
