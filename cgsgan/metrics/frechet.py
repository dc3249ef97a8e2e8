"""Frechet distance between Gaussian fits of two feature sets (the "F" of FID)."""

from __future__ import annotations

import numpy as np
import torch


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


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Frechet distance between Gaussian fits of real [N, D] and fake [M, D] features."""
    return frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))
