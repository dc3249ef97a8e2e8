"""Evaluate a checkpoint offline:

    python -m cgsgan.evaluate --checkpoint CKPT --data DIR
        [--metrics fid,kid,fid3d,fid_novel,fid_bg,sensitivity,psnr_cond,depth_consistency,yaw_bins]
        [--features random|synthetic|FILE] [--floor] [--num N] [--out JSON]

Feature network (--features, the same setting as train.feature_extractor) and metric names:
    FILE of Inception weights  the FID Inception-v3 (pytorch-fid's pt_inception-2015-12-05-*.pth): fid, kid, ...
    FILE of an extractor       the synthetic-heads network (python -m cgsgan.metrics.extractor): fid_synth, ...
    synthetic                  that network, trained once per machine and cached: fid_synth, ...
    random (default)           fixed random features: fid_rand, ...
(--inception FILE and --extractor FILE say the same as --features FILE.) Only the Inception
numbers are comparable with published FID. Nothing is downloaded. --floor compares with half of
the reals (by identity) and reports each distance's floor against the other half, as the trainer
does; without it every real is a reference and there is no floor. fid_novel and yaw_bins need the
synthetic heads (their ground truth at any pose).
Prints a table; --out also writes JSON with the settings and the results.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from cgsgan.config import RenderBackend
from cgsgan.metrics.evaluation import (
    METRICS,
    MetricContext,
    check_metrics,
    evaluate,
    format_table,
)
from cgsgan.metrics.feature_factory import load_features
from cgsgan.metrics.ground_truth import synthetic_truth
from cgsgan.metrics.sampling import as_generator
from cgsgan.training.checkpoint import CHECKPOINT_HELP, open_checkpoint

DEFAULT_METRICS = "fid,kid,fid3d,sensitivity,psnr_cond,depth_consistency"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--data", required=True, help="dataset folder the generator is compared with")
    p.add_argument("--index-list", default=None,
                   help="index list of the reals (image file numbers); default: the training run's "
                        "(data.index_list, 'auto' = smile_pose_rebalancing.json beside --data); 'none': every image")
    p.add_argument("--metrics", default=DEFAULT_METRICS, help=f"comma list of: {','.join(METRICS)}")
    feats = p.add_mutually_exclusive_group()
    feats.add_argument("--features", default="random",
                       help="random, synthetic, or a file: a synthetic-heads extractor or local Inception weights")
    feats.add_argument("--extractor", dest="features", help="synthetic-heads feature network file (= --features FILE)")
    feats.add_argument("--inception", dest="features", help="local FID Inception weights (= --features FILE)")
    p.add_argument("--floor", action="store_true", help="compare with half the reals, the floor from the other half")
    p.add_argument("--num", type=int, default=10_000, help="generated images per distribution metric")
    p.add_argument("--num-real", type=int, default=50_000, help="at most this many real images")
    p.add_argument("--num-3d", type=int, default=64, help="heads for the 3D-consistency metrics")
    p.add_argument("--yaw-bins", type=int, default=5)
    p.add_argument("--truncation", type=float, default=1.0, help="psi (1.0 = none, as for FID)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backend", default=RenderBackend.auto.value, choices=[b.value for b in RenderBackend])
    p.add_argument("--out", help="write the results as JSON here")
    return p.parse_args(argv)


def real_index_list(given: str | None, trained: str) -> str | None:
    """The index list of the reals: --index-list if given ('none' = every image), else the run's
    data.index_list when it still exists here ('auto' is resolved beside --data by the dataset)."""
    if given is not None:
        return None if given == "none" else given
    if trained == "auto" or (trained and Path(trained).is_file()):
        return trained
    if trained:
        print(f"note: the run's index list {trained} is not here; evaluating on every image of the data "
              "(give --index-list)", file=sys.stderr)
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        metrics = check_metrics(args.metrics)
        if args.num < 2:
            raise ValueError(f"--num {args.num}: need at least 2 generated images")
        data = Path(args.data)
        if not data.exists():
            raise FileNotFoundError(f"dataset not found: {data}")
        from cgsgan.data.dataset import ImageDataset
        from cgsgan.training.checkpoint import load_generator

        with open_checkpoint(args.checkpoint, say=lambda msg: print(msg, file=sys.stderr)) as path:
            G, cfg = load_generator(path)
        G = G.to(args.device)
        res = cfg.model.resolution
        extractor = load_features(args.features, device=args.device, size=min(64, res))
        # The reals as the run trained on them (the authors evaluate on the training set: same
        # index list, same mirroring), pasted on white by the metrics.
        index_list = real_index_list(args.index_list, cfg.data.index_list)
        dataset = ImageDataset(data, resolution=res, index_list=index_list, xflip=cfg.data.xflip)
        truth = synthetic_truth(data)
        check_metrics(metrics, ground_truth=truth is not None)
        ctx = MetricContext.of_reals(dataset, extractor, res, args.num, floors=args.floor, truth=truth,
                                     heads=args.num_3d, num_real=args.num_real, seed=args.seed, batch_size=args.batch,
                                     backend=args.backend, yaw_bins=args.yaw_bins)  # fmt: skip
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyError as e:  # a cgsgan file of another kind (no config / no G_ema)
        print(f"error: {args.checkpoint}: not a training checkpoint (missing {e})", file=sys.stderr)
        return 2

    t0 = time.time()
    try:
        results = evaluate(ctx.for_generator(as_generator(G, args.truncation)), metrics)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seconds = time.time() - t0
    kind = {"": "Inception-v3 (FID network)", "synth": "synthetic-heads extractor (not comparable with FID)",
            "rand": "random features (not comparable with FID)"}.get(extractor.suffix, extractor.suffix)
    print(f"checkpoint {args.checkpoint} | data {data} | {args.num} generated images | features: {kind}")
    print(format_table(results))
    print(f"({seconds:.1f} s)")
    if args.out:
        payload = {
            "checkpoint": str(args.checkpoint), "data": str(data), "features": kind, "num": args.num,
            "num_real": min(args.num_real, len(ctx.reference)), "floor": args.floor, "num_3d": args.num_3d, "truncation": args.truncation,
            "seed": args.seed, "seconds": seconds, "metrics": results,
        }  # fmt: skip
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
