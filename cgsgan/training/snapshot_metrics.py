"""The metrics the trainer reports at snapshots, with what they need built once per run.

Distribution metrics compare generated images with a reference half of the dataset (split by
identity where the dataset knows identities, so no head is in both halves). The other half is
held out: the distance between it and the reference half, with as many images as the
generated side, is the floor a perfect generator would reach; every distribution metric is
reported with that floor and its ratio to it ("x times the floor"):

    fid_synth, fid_synth_floor, fid_synth_ratio, fid3d_synth (same floor), sensitivity, psnr_cond
"""

from __future__ import annotations

from pathlib import Path

import torch

from cgsgan.config import CGSGANConfig
from cgsgan.data.dataset import ImageDataset
from cgsgan.data.prepare import cache_root
from cgsgan.generator import Generator
from cgsgan.metrics.evaluation import DISTRIBUTION_METRICS, check_metrics, evaluate_generator
from cgsgan.metrics.features import FeatureExtractor, metric_name
from cgsgan.metrics.frechet import RandomFeatures
from cgsgan.metrics.metrics import fid_from_features, real_features


class ItemSubset:
    """The items `indices` of a dataset, with their labels (what the metrics read)."""

    def __init__(self, dataset: ImageDataset, indices: torch.Tensor) -> None:
        self.dataset, self.indices = dataset, indices
        self.background = dataset.background
        self.labels = dataset.labels[indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.dataset[int(self.indices[i])]


def split_reference(dataset: ImageDataset, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Item indices of the reference and the held-out half: by identity when every item has one."""
    g = torch.Generator().manual_seed(seed)
    ids = dataset.identities
    if len(ids) and bool((ids >= 0).all()):
        unique = torch.unique(ids)
        held = unique[torch.randperm(len(unique), generator=g)[: len(unique) // 2]]
        is_held = torch.isin(ids, held)
    else:
        is_held = torch.zeros(len(dataset), dtype=torch.bool)
        is_held[torch.randperm(len(dataset), generator=g)[: len(dataset) // 2]] = True
    return (~is_held).nonzero().squeeze(1), is_held.nonzero().squeeze(1)


def make_feature_extractor(kind: str, device: torch.device) -> FeatureExtractor:
    """train.feature_extractor: "synthetic" (cached, trained on first use), "random", or an Inception weights file."""
    if kind == "random":
        return RandomFeatures()
    if kind == "synthetic":
        from cgsgan.metrics.extractor import ensure_synthetic_extractor, load_extractor

        return load_extractor(ensure_synthetic_extractor(cache_root()), device=device)
    from cgsgan.metrics.inception import load_inception

    return load_inception(kind, device=device)


class SnapshotMetrics:
    def __init__(self, cfg: CGSGANConfig, data_path: str | Path, device: torch.device | str = "cpu") -> None:
        t = cfg.train
        self.cfg = cfg
        self.names = check_metrics(t.snapshot_metrics)
        self.extractor = make_feature_extractor(t.feature_extractor, torch.device(device))
        white = ImageDataset(data_path, resolution=cfg.model.resolution, index_list=cfg.data.index_list or None,
                             xflip=cfg.data.xflip, background="white")
        ref, held = split_reference(white, seed=t.seed)
        self.reference, self.held_out = ItemSubset(white, ref), ItemSubset(white, held)
        self.cache: dict = {}
        self.floor: float | None = None

    def _floor(self) -> float:
        """FD between the reference half and as many held-out reals as generated images."""
        if self.floor is None:
            n = min(self.cfg.train.metric_samples, len(self.held_out))
            ref = real_features(self.reference, self.extractor, len(self.reference))
            self.floor = fid_from_features(ref, real_features(self.held_out, self.extractor, n, seed=1))
        return self.floor

    @torch.no_grad()
    def __call__(self, G: Generator) -> dict[str, float]:
        t = self.cfg.train
        out = evaluate_generator(G, self.reference, self.names, self.extractor, num=t.metric_samples,
                                 num_real=len(self.reference), num_3d=t.snapshot_metric_heads, backend=t.render_backend,
                                 resolution=self.cfg.model.resolution, cache=self.cache)
        if any(m in self.names for m in DISTRIBUTION_METRICS if m != "kid"):
            floor = self._floor()
            fid = metric_name("fid", self.extractor)
            out[f"{fid}_floor"] = floor
            for base in ("fid", "fid3d"):
                name = metric_name(base, self.extractor)
                if name in out:
                    out[f"{name}_ratio"] = out[name] / floor if floor > 0 else float("inf")
        return out
