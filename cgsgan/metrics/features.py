"""One interface for the feature networks the distribution metrics use.

Three implementations, each labelled so its numbers are never mistaken for one another's:

    InceptionFeatures  (metrics/inception.py)  suffix ""       -> "fid", "kid": the standard FID network
    SynthFeatures      (metrics/extractor.py)  suffix "synth"  -> "fid_synth", ...: trained on synthetic heads
    RandomFeatures     (metrics/random_features.py)  suffix "rand" -> "fid_rand", ...: fixed random weights

Only the first is comparable with published FID/KID; the other two track progress without it.
`load_features` is the one factory that makes any of them from a setting (train.feature_extractor,
the CLI's --features).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import torch


@runtime_checkable
class FeatureExtractor(Protocol):
    """images [N, 3, H, W] in [-1, 1] (any N, any H x W) -> features [N, dim] (float32, CPU).

    Implementations batch internally, so N may be in the thousands.
    """

    dim: int
    suffix: str  # appended to metric names ("" for the real Inception network)

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def metric_name(base: str, extractor: FeatureExtractor) -> str:
    """'fid' + suffix 'synth' -> 'fid_synth'; the Inception network keeps the bare name."""
    return f"{base}_{extractor.suffix}" if extractor.suffix else base


def extractor_suffix(spec: str | Path) -> str:
    """The metric-name suffix of the feature network a setting names (what `load_features(spec)`
    would give): "synth" for "synthetic", "rand" for "random"; a file is opened to tell."""
    known = {"synthetic": "synth", "random": "rand"}
    return known[str(spec)] if str(spec) in known else load_features(spec).suffix


def in_batches(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Apply `fn` to [N, ...] in chunks of `batch_size` and concatenate: bounded peak memory."""
    if len(images) == 0:
        raise ValueError("no images to extract features from")
    return torch.cat([fn(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def load_features(spec: str | Path, device: str | torch.device = "cpu", size: int = 64) -> FeatureExtractor:
    """The feature network a setting names: "synthetic" (the synthetic-heads extractor cached under
    CGSGAN_DATA_CACHE, trained there on first use), "random" (fixed random features at `size` px),
    or a file: a synthetic-heads extractor (python -m cgsgan.metrics.extractor) or local
    pytorch-fid Inception weights, told apart by their content. Nothing is downloaded."""
    from cgsgan.metrics import extractor, inception

    if str(spec) == "random":
        from cgsgan.metrics.random_features import RandomFeatures

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
