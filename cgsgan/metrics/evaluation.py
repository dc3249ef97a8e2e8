"""`evaluate_generator`: a chosen subset of the metrics as one flat dict of floats.

Used by the CLI (`python -m cgsgan.evaluate`) and meant for the trainer at snapshots, whose
orchestration logs the dict (e.g. to MLflow). Names:

    fid{s}, kid{s}, fid3d{s}            s = "" (Inception), "_synth" (synthetic extractor), "_rand" (random features)
    sensitivity, sensitivity/<attr>     conditioning sensitivity (0 for the camera-free generator)
    psnr_cond                           dB, capped at 100 (= identical renders)
    depth_consistency[/median, /valid_fraction]
    yaw_fd{s}/binI, yaw_kid{s}/binI, yaw_bins/binI_lo_deg, yaw_bins/binI_hi_deg   (synthetic data only)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch

from cgsgan.generator import Generator
from cgsgan.metrics.features import FeatureExtractor, metric_name
from cgsgan.metrics.frechet import RandomFeatures
from cgsgan.metrics.metrics import (
    GaussianGenerator,
    GroundTruthRender,
    as_generator,
    conditioning_psnr,
    conditioning_sensitivity,
    depth_consistency,
    fid_from_features,
    generated_features,
    kid_from_features,
    real_features,
    yaw_bin_distances,
)

METRICS = ("fid", "kid", "fid3d", "sensitivity", "psnr_cond", "depth_consistency", "yaw_bins")
DISTRIBUTION_METRICS = ("fid", "kid", "fid3d")


def check_metrics(metrics: Sequence[str] | str) -> list[str]:
    """'fid,kid' or ['fid', 'kid'] -> validated list; unknown names raise a ValueError listing the valid ones."""
    names = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else [m.strip() for m in metrics]
    names = [m for m in names if m]
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}")
    if not names:
        raise ValueError(f"no metrics given; choose from {', '.join(METRICS)}")
    return names


def make_extractor(extractor: str | Path | None = None, inception: str | Path | None = None,
                   device: str | torch.device = "cpu", size: int = 64) -> FeatureExtractor:
    """--extractor FILE (synthetic, "_synth"), --inception FILE (FID network, bare names), or neither
    (fixed random features, "_rand")."""
    if extractor and inception:
        raise ValueError("give either an extractor file or Inception weights, not both")
    if inception:
        from cgsgan.metrics.inception import load_inception

        return load_inception(inception, device=device)
    if extractor:
        from cgsgan.metrics.extractor import load_extractor

        return load_extractor(extractor, device=device)
    return RandomFeatures(size=size)


def synthetic_ground_truth(data: str | Path, resolution: int) -> tuple[GroundTruthRender, int]:
    """Re-render function and identity count of a synthetic-heads dataset (for the yaw bins).

    Raises ValueError for any other dataset: only the synthetic heads have ground truth at
    arbitrary poses.
    """
    from cgsgan.data import synthetic

    info = synthetic.read_info(data)  # ValueError for a dataset that is not synthetic heads
    seed, identities = int(info["seed"]), int(info["identities"])

    def gt_render(identity: int, labels: torch.Tensor) -> torch.Tensor:
        rgb, mask = synthetic.render_identity(seed, identity, labels, resolution)
        mask = mask if mask.dim() == 4 else mask[:, None]
        return (rgb * mask + (1 - mask)) * 2 - 1  # on white, in [-1, 1]

    return gt_render, identities


@torch.no_grad()
def evaluate_generator(
    G: Generator | GaussianGenerator,
    dataset,
    metrics: Sequence[str] | str = ("fid",),
    extractor: FeatureExtractor | None = None,
    num: int = 1000,
    *,
    num_real: int | None = None,
    num_3d: int = 64,
    psi: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    backend: str = "auto",
    resolution: int | None = None,
    labels: torch.Tensor | None = None,
    data_path: str | Path | None = None,
    gt_render: GroundTruthRender | None = None,
    num_identities: int | None = None,
    yaw_bins: int = 5,
    per_bin: int | None = None,
    cache: dict | None = None,
) -> dict[str, float]:
    """Compute `metrics` for generator G against `dataset` (an ImageDataset, or anything with
    __len__, __getitem__ -> {"image", "mask", "label"} and .labels [M, 25]).

    num: generated images for fid/kid/fid3d (cameras drawn from the dataset labels); num_real:
    real images (default: all of the dataset, up to 50k); num_3d: heads for the 3D metrics.
    extractor: a FeatureExtractor; None uses RandomFeatures (names end in "_rand").
    cache: a dict the caller keeps between calls (e.g. the trainer across snapshots): real
    features are computed once per (extractor name, width, num_real, seed) and reused.
    yaw_bins needs the synthetic ground truth: `gt_render` + `num_identities`, or `data_path` /
    `dataset.path` of a synthetic-heads folder.
    """
    names = check_metrics(metrics)
    gen = as_generator(G, psi)
    res = resolution or getattr(gen, "resolution", None) or int(dataset[0]["image"].shape[-1])
    extractor = extractor if extractor is not None else RandomFeatures(size=min(64, res))
    pool = (labels if labels is not None else dataset.labels).detach().float().cpu()
    out: dict[str, float] = {}

    fakes: dict[str, torch.Tensor] = {}
    if any(m in names for m in DISTRIBUTION_METRICS):
        n_real = min(num_real or 50_000, len(dataset))
        key = ("real_features", extractor.suffix, extractor.dim, n_real, seed)
        reals = cache.get(key) if cache is not None else None
        if reals is None:
            reals = real_features(dataset, extractor, n_real, seed=seed, batch_size=batch_size)
            if cache is not None:
                cache[key] = reals

        def fake(condition: str) -> torch.Tensor:
            if condition not in fakes:
                fakes[condition] = generated_features(gen, extractor, pool, num, res, condition=condition, seed=seed + 1,
                                                      batch_size=batch_size, backend=backend)
            return fakes[condition]

        if "fid" in names:
            out[metric_name("fid", extractor)] = fid_from_features(reals, fake("own"))
        if "kid" in names:
            out[metric_name("kid", extractor)] = kid_from_features(reals, fake("own"), subset_size=min(1000, num, n_real),
                                                                   seed=seed)
        if "fid3d" in names:
            # The camera-free generator ignores c, so conditioning on the frontal camera renders
            # the very same images (same z, same cameras): reuse them instead of rendering twice.
            same = getattr(gen, "camera_conditioned", None) is False and "own" in fakes
            out[metric_name("fid3d", extractor)] = fid_from_features(reals, fake("own" if same else "frontal"))

    if "sensitivity" in names:
        out.update(conditioning_sensitivity(gen, pool, num_z=max(2, min(num_3d, 16)), num_cams=8, seed=seed))
    if "psnr_cond" in names:
        out["psnr_cond"] = conditioning_psnr(gen, pool, res, num=num_3d, seed=seed, batch_size=min(batch_size, 16),
                                             backend=backend)
    if "depth_consistency" in names:
        out.update(depth_consistency(gen, pool, res, num=num_3d, seed=seed, batch_size=min(batch_size, 16),
                                     backend=backend))
    if "yaw_bins" in names:
        if gt_render is None:
            path = data_path or getattr(dataset, "path", None)
            if path is None:
                raise ValueError("yaw_bins needs the synthetic ground truth: pass gt_render/num_identities or data_path")
            gt_render, num_identities = synthetic_ground_truth(path, res)
        if num_identities is None:
            raise ValueError("yaw_bins: num_identities is required with a custom gt_render")
        bins = yaw_bin_distances(gen, extractor, pool, gt_render, num_identities, res, num_bins=yaw_bins,
                                 per_bin=per_bin or min(256, max(16, num // yaw_bins)), seed=seed,
                                 batch_size=batch_size, backend=backend)
        for b in bins:
            out[f"{metric_name('yaw_fd', extractor)}/bin{b.index}"] = b.fd
            out[f"{metric_name('yaw_kid', extractor)}/bin{b.index}"] = b.kid
            out[f"yaw_bins/bin{b.index}_lo_deg"] = b.yaw_lo_deg
            out[f"yaw_bins/bin{b.index}_hi_deg"] = b.yaw_hi_deg
    return {k: float(v) for k, v in out.items()}


def format_table(results: dict[str, float]) -> str:
    """Aligned two-column text table of a results dict."""
    width = max((len(k) for k in results), default=6)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 12}"]
    for k, v in results.items():
        text = "nan" if math.isnan(v) else f"{v:.6g}"
        lines.append(f"{k:<{width}}  {text}")
    return "\n".join(lines)
