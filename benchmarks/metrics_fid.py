"""FID speed on CPU: 10k generated 64x64 images from the tiny generator (config.tiny(), CPU tiled
renderer) against the synthetic heads, with the synthetic-heads extractor. Writes
benchmarks/results/metrics.md with the machine it ran on.

    python benchmarks/metrics_fid.py [--num 10000] [--extractor FILE] [--steps 2000]

Without --extractor it generates the synthetic dataset (cached like the trainer's) and trains the
extractor first; that training time is reported separately and is not part of the FID figure.
The generator is untrained (weights perturbed away from the init so heads differ), so the FID
value itself means nothing; the seconds are the point.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe  # noqa: E402
from cgsgan import config  # noqa: E402
from cgsgan.generator import Generator  # noqa: E402
from cgsgan.metrics.extractor import load_extractor, load_training_set, save_extractor, train_extractor  # noqa: E402
from cgsgan.metrics.metrics import as_generator, fid_from_features, real_features  # noqa: E402
from cgsgan.metrics.features import metric_name  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "metrics.md"


def tiny_generator(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    cfg = config.tiny()
    G = Generator(cfg.model.generator, cfg.model.resolution).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return G


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--extractor", help="a trained extractor file (skips training)")
    p.add_argument("--steps", type=int, default=2000, help="extractor training steps when none is given")
    args = p.parse_args()

    from cgsgan.data.dataset import ImageDataset
    from cgsgan.training.trainer import prepare_data

    cfg = config.tiny()
    t = time.time()
    data = prepare_data(cfg)  # the tiny config's synthetic heads at 64x64 (generated once, cached)
    t_data = time.time() - t
    dataset = ImageDataset(data, resolution=64)

    t_train = 0.0
    if args.extractor:
        extractor = load_extractor(args.extractor)
        steps = extractor.meta.get("train", {}).get("steps", "?")
    else:
        t = time.time()
        images, labels, ids = load_training_set(data, 64)
        net, stats = train_extractor(images, labels, ids, steps=args.steps, log_every=max(1, args.steps // 10))
        path = Path(data) / "extractor-bench.pt"
        save_extractor(net, {"train": stats}, path)
        extractor = load_extractor(path)
        t_train, steps = time.time() - t, args.steps

    G = tiny_generator()
    gen = as_generator(G)
    torch.set_grad_enabled(False)

    t = time.time()
    reals = real_features(dataset, extractor, len(dataset))
    t_real = time.time() - t

    # One pass, as generated_features does it, timing the two halves separately: generate +
    # render (inside the iterator) and feature extraction. Wall and CPU (process) seconds both:
    # the machine is shared, and CPU time is what other jobs' load does not inflate as much.
    from cgsgan.metrics.metrics import iter_generated

    load_before = os.getloadavg()
    t, c = time.time(), time.process_time()
    t_extract = c_extract = 0.0
    feats = []
    for images in iter_generated(gen, dataset.labels, args.num, 64, batch_size=args.batch, backend="torch"):
        te, ce = time.time(), time.process_time()
        feats.append(extractor(images))
        t_extract += time.time() - te
        c_extract += time.process_time() - ce
    fakes = torch.cat(feats)
    t_fake, c_fake = time.time() - t, time.process_time() - c
    load_after = os.getloadavg()
    t = time.time()
    fid = fid_from_features(reals, fakes)
    t_fd = time.time() - t
    total = t_real + t_fake + t_fd

    # Sanity of the trained features: held-out reals close, blurred reals farther, monotonically.
    from cgsgan.losses import blur
    from cgsgan.metrics.metrics import real_images

    half = len(dataset) // 2
    perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    fa = extractor(real_images(dataset, perm[:half]))
    b = real_images(dataset, perm[half : 2 * half])
    sanity = {s: fid_from_features(fa, extractor(blur(b, s))) for s in (0.0, 0.5, 1.0, 2.0)}

    name = metric_name("fid", extractor)
    lines = [
        "# FID on CPU: tiny generator, synthetic-heads extractor",
        "",
        describe(),
        "",
        f"{args.num} generated images at 64x64 (config.tiny() generator: {G.cfg.num_points} points, "
        f"{sum(u.ratio * G.cfg.num_points for u in G.upsample)} Gaussians; CPU tiled renderer; batch {args.batch}) "
        f"against {len(dataset)} real synthetic heads; features: synthetic-heads extractor "
        f"({extractor.dim}-d, {steps} training steps).",
        "",
        "| stage | wall seconds | CPU seconds (process) |",
        "|---|---|---|",
        f"| real features ({len(dataset)} images) | {t_real:.1f} | |",
        f"| generate + render + features ({args.num} images) | {t_fake:.1f} | {c_fake:.1f} |",
        f"| of which feature extraction | {t_extract:.1f} | {c_extract:.1f} |",
        f"| Frechet distance ({extractor.dim}-d) | {t_fd:.2f} | |",
        f"| **total FID** | **{total:.1f}** | |",
        "",
        f"Load average (1/5/15 min) of the shared machine: {' '.join(f'{x:.2f}' for x in load_before)} before, "
        f"{' '.join(f'{x:.2f}' for x in load_after)} after ({os.cpu_count()} cores; other jobs ran alongside).",
        "",
        f"Target: under 300 s. {name} = {fid:.3f} (an untrained generator; the value is not a quality "
        "figure and `*_synth` numbers are never comparable with published FID).",
        "",
        f"Sanity of the extractor ({half} vs {half} real images): {name}(real, held-out real) = {sanity[0.0]:.4f}; "
        "against the held-out half blurred with sigma 0.5 / 1 / 2 px: "
        + " / ".join(f"{sanity[s]:.4f}" for s in (0.5, 1.0, 2.0)) + ".",
        "",
        f"Not counted above: synthetic dataset preparation {t_data:.1f} s (cached after the first run), "
        f"extractor training {t_train:.1f} s ({'given' if args.extractor else f'{steps} steps'}).",
        "",
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
