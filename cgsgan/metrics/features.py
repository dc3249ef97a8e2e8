"""One interface for the feature networks the distribution metrics use.

Three implementations, each labelled so its numbers are never mistaken for one another's:

    InceptionFeatures  (metrics/inception.py)  suffix ""       -> "fid", "kid": the standard FID network
    SynthFeatures      (metrics/extractor.py)  suffix "synth"  -> "fid_synth", ...: trained on synthetic heads
    RandomFeatures     (metrics/random_features.py)  suffix "rand" -> "fid_rand", ...: fixed random weights

Only the first is comparable with published FID/KID; the other two track progress without it.
`load_features` (metrics/feature_factory.py) makes any of them from a setting (train.feature_extractor,
the CLI's --features); this module is the interface only, so the networks import it without a circle.
"""

from __future__ import annotations

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


def in_batches(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Apply `fn` to [N, ...] in chunks of `batch_size` and concatenate: bounded peak memory."""
    if len(images) == 0:
        raise ValueError("no images to extract features from")
    return torch.cat([fn(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
