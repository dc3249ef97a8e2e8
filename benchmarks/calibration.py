"""The claim metrics on the hand-built generators (tests/unit/metric_heads.py), scored with the
feature network the sweeps and the main job use (train.feature_extractor=synthetic, 64 px), as
ratios to each floor: how far a right generator, a card and a floater head sit from a perfect one.

    python -m benchmarks.calibration [--samples 512] [--identities 256]

Prints a markdown table (and the geometry score where the registry has it). The reals are the
main job's synthetic heads (256 identities x 4 views at 64 px, seed 0), split by identity.
"""

from __future__ import annotations

import argparse
import time

import torch

from cgsgan.data.dataset import ImageDataset
from cgsgan.data.synthetic import generate_synthetic
from cgsgan.data.prepare import cache_root
from cgsgan.metrics.evaluation import METRICS, MetricContext, evaluate
from cgsgan.metrics.ground_truth import SyntheticTruth
from tests.unit.metric_heads import Billboard, SurfaceHeads, WithFloaters


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--identities", type=int, default=256)
    p.add_argument("--features", default="synthetic")
    args = p.parse_args(argv)
    from cgsgan.metrics.feature_factory import load_features

    t0 = time.time()
    data = generate_synthetic(cache_root() / f"synthetic-64px-{args.identities}x4-seed0", args.identities, 4, 64, 0)
    ds = ImageDataset(data)
    ctx = MetricContext.of_reals(ds, load_features(args.features, size=64), 64, args.samples,
                                 truth=SyntheticTruth.of_dataset(data), batch_size=64)
    heads = SurfaceHeads(seed=0, num_identities=args.identities)
    gens = {"SurfaceHeads (a true 3D head)": heads,
            "Billboard (flat card)": Billboard(seed=0, num_identities=args.identities),
            "Billboard facing the camera": Billboard(seed=0, num_identities=args.identities, facing=True),
            "SurfaceHeads + white floaters": WithFloaters(heads)}
    names = ["fid", "fid_novel", "fid_bg"] + (["geometry"] if "geometry" in METRICS else [])
    s = ctx.extractor.suffix
    print(f"| generator | fid | fid_novel | fid_bg |{' geometry |' if 'geometry' in names else ''}")
    print(f"|---|---|---|---|{'---|' if 'geometry' in names else ''}")
    for label, gen in gens.items():
        r = evaluate(ctx.for_generator(gen), names)
        cells = [r[f"fid_{s}_ratio"], r[f"fid_{s}_novel_ratio"], r[f"fid_{s}_bg_ratio"]]
        row = " | ".join(f"{v:.1f}" for v in cells)
        if "geometry" in names:
            row += f" | {r['geometry']:.2f}"
        print(f"| {label} | {row} |", flush=True)
    print(f"({args.samples} samples, {ctx.heads} heads for the geometry, {time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
