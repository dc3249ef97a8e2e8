"""The one factory that makes a feature network from a setting (train.feature_extractor, the CLI's
--features), and the metric-name suffix that setting gives. It imports the three networks; they
import only the interface (metrics/features.py), so nothing imports back into this module."""

from __future__ import annotations

from pathlib import Path

import torch

from cgsgan.metrics import extractor, inception
from cgsgan.metrics.features import FeatureExtractor
from cgsgan.metrics.random_features import RandomFeatures


def extractor_suffix(spec: str | Path) -> str:
    """The metric-name suffix of the feature network a setting names (what `load_features(spec)`
    would give): "synth" for "synthetic", "rand" for "random"; a file is opened to tell."""
    known = {"synthetic": "synth", "random": "rand"}
    return known[str(spec)] if str(spec) in known else load_features(spec).suffix


def load_features(spec: str | Path, device: str | torch.device = "cpu", size: int = 64) -> FeatureExtractor:
    """The feature network a setting names: "synthetic" (the synthetic-heads extractor cached under
    CGSGAN_DATA_CACHE, trained there on first use), "random" (fixed random features at `size` px),
    or a file: a synthetic-heads extractor (python -m cgsgan.metrics.extractor) or local
    pytorch-fid Inception weights, told apart by their content. Nothing is downloaded."""
    if str(spec) == "random":
        return RandomFeatures(size=size)
    if str(spec) == "synthetic":
        from cgsgan.data.prepare import cache_root

        return extractor.load_extractor(extractor.ensure_synthetic_extractor(cache_root()), device=device)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"features file not found: {path}: expected synthetic, random, an extractor file "
                                f"(python -m cgsgan.metrics.extractor) or Inception weights. {inception.WEIGHTS_HINT}")
    try:
        return extractor.load_extractor(path, device=device)
    except extractor.NotAnExtractorFile:
        return inception.load_inception(path, device=device)
