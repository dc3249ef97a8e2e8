"""The claim metrics on the hand-built generators (tests/unit/metric_heads.py), scored as the
README's main job scores its snapshots (its dataset, feature network and sample count; the same
as tests/unit/test_metrics_calibration.py), as ratios to each floor: how far a right generator, a
card and a floater head sit from a perfect one.

    python -m benchmarks.calibration [--samples N] [--heads N]

Prints a markdown table with the geometry score. The reals are the main job's synthetic heads,
split by identity.
"""

from __future__ import annotations

import argparse
import time

import torch

from cgsgan import config
from cgsgan.data.dataset import ImageDataset
from cgsgan.data.prepare import prepare_data
from cgsgan.metrics.evaluation import MetricContext, evaluate
from cgsgan.metrics.ground_truth import SyntheticTruth
from tests.unit.metric_heads import Billboard, SurfaceHeads, WithFloaters


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    cfg = config.tiny()  # the README's main job
    p.add_argument("--samples", type=int, default=cfg.train.metric_samples, help="generated images per metric")
    p.add_argument("--heads", type=int, default=cfg.train.snapshot_metric_heads, help="heads for the geometry")
    args = p.parse_args(argv)
    from cgsgan.metrics.feature_factory import load_features

    t0 = time.time()
    data, res, n, seed = prepare_data(cfg), cfg.model.resolution, cfg.data.synthetic_identities, cfg.data.synthetic_seed
    ctx = MetricContext.of_reals(ImageDataset(data, resolution=res), load_features(cfg.train.feature_extractor, size=res),
                                 res, args.samples, heads=args.heads, truth=SyntheticTruth.of_dataset(data), batch_size=64)
    heads = SurfaceHeads(seed=seed, num_identities=n, resolution=res)
    gens = {"SurfaceHeads (a true 3D head)": heads,
            "Billboard (flat card)": Billboard(seed=seed, num_identities=n),
            "Billboard facing the camera": Billboard(seed=seed, num_identities=n, facing=True),
            "SurfaceHeads + white floaters": WithFloaters(heads)}
    names = ["fid", "fid_novel", "fid_bg", "geometry"]
    s = ctx.extractor.suffix
    print("| generator | fid | fid_novel | fid_bg | geometry |")
    print("|---|---|---|---|---|")
    for label, gen in gens.items():
        r = evaluate(ctx.for_generator(gen), names)
        cells = [r[f"fid_{s}_ratio"], r[f"fid_{s}_novel_ratio"], r[f"fid_{s}_bg_ratio"]]
        row = " | ".join(f"{v:.2f}" for v in cells) + f" | {r['geometry']:.2f}"
        print(f"| {label} | {row} |", flush=True)
    print(f"({args.samples} samples, {ctx.heads} heads for the geometry, {time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
