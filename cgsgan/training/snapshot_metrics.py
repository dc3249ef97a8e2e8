"""The metrics the trainer reports at snapshots, with what they need built once per run.

The names and what they measure are the registry's (cgsgan/metrics/evaluation.py). Distribution
metrics compare generated images with a reference half of the dataset (split by identity where
the dataset knows identities, so no head is in both halves); the other half is held out and gives
each distance its floor and its ratio to it ("x times the floor"). The split, the feature network
and every real-side number depend on the dataset only, never on train.seed: trials of a sweep
that differ in their seed are measured against the very same reals and floors.

    fid_synth, fid_synth_floor, fid_synth_ratio, fid3d_synth (same floor), sensitivity, psnr_cond, ...
"""

from __future__ import annotations

from pathlib import Path

import torch

from cgsgan.config import CGSGANConfig
from cgsgan.data.dataset import ImageDataset
from cgsgan.generator import Generator
from cgsgan.metrics.evaluation import MetricContext, check_metrics, evaluate
from cgsgan.metrics.feature_factory import load_features
from cgsgan.metrics.ground_truth import synthetic_truth
from cgsgan.metrics.sampling import as_generator


class SnapshotMetrics:
    def __init__(self, cfg: CGSGANConfig, data_path: str | Path, device: torch.device | str = "cpu") -> None:
        t = cfg.train
        self.cfg = cfg
        truth = synthetic_truth(data_path)
        self.names = check_metrics(t.snapshot_metrics, ground_truth=truth is not None)
        res = cfg.model.resolution
        extractor = load_features(t.feature_extractor, torch.device(device), size=min(64, res))
        # Stored images with their masks: the metrics paste them on white, or on the
        # background metric's colours.
        reals = ImageDataset(data_path, resolution=res, index_list=cfg.data.index_list or None, xflip=cfg.data.xflip)
        self.context = MetricContext.of_reals(reals, extractor, res, t.metric_samples, truth=truth,
                                              heads=t.snapshot_metric_heads, backend=t.render_backend)

    @torch.no_grad()
    def __call__(self, G: Generator) -> dict[str, float]:
        return evaluate(self.context.for_generator(as_generator(G)), self.names)
