"""A small feature network trained on the synthetic heads, for FID-like numbers without Inception weights.

    python -m cgsgan.metrics.extractor --data DIR --out FILE [--steps N] [--size 64]

The network sees the dataset's images on white at 64x64 and learns four things at once, so its
128-d embedding encodes what a head generator must get right:
    yaw and pitch of the camera (regression, from the labels)     -> pose
    the identity id (classification)                              -> shape and colour of a head
    mean colours of a 4x4 grid of the image (regression)          -> layout and colour
    the std of a Gaussian blur applied to half the images         -> sharpness
Features are the embedding (before the task heads). Numbers computed with it are named
"*_synth" (fid_synth, kid_synth, ...) and are NOT comparable with published FID: a different
network on different data.

The file is `torch.save({"format", "meta", "state_dict"})` holding only tensors and plain values
(no pickled code); `load_extractor(FILE)` reads it with weights_only=True.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cgsgan import camera
from cgsgan.atomic_file import atomic_torch_save
from cgsgan.image_ops import blur
from cgsgan.metrics.features import in_batches

FORMAT = "cgsgan-synth-extractor-v1"
GRID = 4  # colour targets: GRID x GRID cells x RGB
MAX_BLUR = 2.0  # px at the network's input size


class SynthFeatureNet(nn.Module):
    """images [N, 3, size, size] in [-1, 1] -> embedding [N, feat_dim]; task heads on top."""

    def __init__(self, num_identities: int, width: int = 16, feat_dim: int = 128, size: int = 64) -> None:
        super().__init__()
        if size % 16:
            raise ValueError(f"input size must be a multiple of 16, got {size}")
        self.arch = {"num_identities": num_identities, "width": width, "feat_dim": feat_dim, "size": size}
        w = width
        # The first conv already strides: full-resolution activations dominate the cost on CPU,
        # and a 3x3 stride-2 kernel still sees every pixel (so blur stays visible).
        chans = [(3, w, 2), (w, 2 * w, 1), (2 * w, 4 * w, 2), (4 * w, 8 * w, 2), (8 * w, 8 * w, 2)]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=s, padding=1) for a, b, s in chans)  # size -> size / 16
        self.embed = nn.Linear(8 * w * (size // 16) ** 2, feat_dim)  # keeps the spatial layout (pose)
        self.pose = nn.Linear(feat_dim, 2)
        self.identity = nn.Linear(feat_dim, num_identities)
        self.colour = nn.Linear(feat_dim, 3 * GRID * GRID)
        self.blur = nn.Linear(feat_dim, 1)

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
        return self.embed(x.flatten(1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        e = self.embedding(x)
        h = F.leaky_relu(e, 0.2)
        return {"embedding": e, "pose": self.pose(h), "identity": self.identity(h), "colour": self.colour(h),
                "blur": self.blur(h)[:, 0]}


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """[N, 3, H, W] -> [N, 3, size, size]: area averaging when shrinking (anti-aliased), bilinear otherwise."""
    if images.shape[-2:] == (size, size):
        return images
    if images.shape[-1] > size:
        return F.interpolate(images, size=(size, size), mode="area")
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


class SynthFeatures(nn.Module):
    """FeatureExtractor (suffix "synth"): images [N, 3, H, W] in [-1, 1] -> [N, feat_dim]."""

    suffix = "synth"

    def __init__(self, net: SynthFeatureNet, meta: dict | None = None, batch_size: int = 256,
                 device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False).to(device)
        self.meta = meta or {}
        self.dim = net.arch["feat_dim"]
        self.size = net.arch["size"]
        self.batch_size, self.device = batch_size, torch.device(device)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return in_batches(self._features, images, self.batch_size)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        x = resize(images.to(self.device, torch.float32).clamp(-1, 1), self.size)
        return self.net.embedding(x).float().cpu()


# ---------------------------------------------------------------------------------------- file
def save_extractor(net: SynthFeatureNet, meta: dict, path: str | Path) -> Path:
    """Atomic write of {"format", "meta" (JSON-able), "state_dict"}."""
    json.dumps(meta)  # fails early if the meta is not plain data
    payload = {"format": FORMAT, "meta": {**meta, "arch": dict(net.arch)}, "state_dict": net.state_dict()}
    return atomic_torch_save(payload, path)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


class NotAnExtractorFile(ValueError):
    """A readable torch file that is not a synthetic-heads extractor (e.g. Inception weights)."""


def load_extractor(path: str | Path, device: str | torch.device = "cpu", batch_size: int = 256) -> SynthFeatures:
    """The synthetic-heads feature extractor saved by `save_extractor` / the CLI."""
    path = Path(path)
    hint = "train one with: python -m cgsgan.metrics.extractor --data DIR --out FILE"
    if not path.is_file():
        raise FileNotFoundError(f"extractor file not found: {path} ({hint})")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable extractor file ({type(e).__name__}: {_first_line(e)}); {hint}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise NotAnExtractorFile(f"{path}: not a synthetic-heads extractor (format {got!r}, expected {FORMAT!r}); {hint}")
    meta = payload["meta"]
    arch = meta["arch"]
    net = SynthFeatureNet(arch["num_identities"], arch["width"], arch["feat_dim"], arch["size"])
    try:
        net.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit the architecture in its meta: {e}") from e
    return SynthFeatures(net, meta, batch_size=batch_size, device=device)


# ---------------------------------------------------------------------------------------- training
def load_training_set(data: str | Path, size: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The dataset on white at size x size: images [N, 3, s, s] in [-1, 1], labels [N, 25], identities [N]."""
    from cgsgan.data.dataset import ImageDataset  # the data package is only needed for training
    from cgsgan.metrics.sampling import real_images

    dataset = ImageDataset(data, xflip=False)
    if len(dataset) == 0:
        raise ValueError(f"{data}: the dataset is empty")
    ids = dataset.identities.clone()
    if (ids < 0).any():
        raise ValueError(f"{data}: dataset.json gives no identity for some images; the extractor is trained on "
                         "the synthetic heads (cgsgan.data.synthetic), whose identities are known")
    images = [resize(real_images(dataset, range(s, min(s + 256, len(dataset)))), size)
              for s in range(0, len(dataset), 256)]
    return torch.cat(images), dataset.labels.clone().float(), ids


def colour_grid(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, s, s] -> mean colour of each of GRID x GRID cells [N, 3 * GRID * GRID]."""
    return F.adaptive_avg_pool2d(images, GRID).flatten(1)


def train_extractor(
    images: torch.Tensor,
    labels: torch.Tensor,
    identities: torch.Tensor,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    log_every: int = 0,
    width: int = 16,
    feat_dim: int = 128,
) -> tuple[SynthFeatureNet, dict]:
    """Train on images [N, 3, s, s] in [-1, 1]; returns the net and JSON-able training stats."""
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    # Identity ids may be sparse (a filtered dataset): classify over the ids present.
    uniq, id_index = torch.unique(identities, return_inverse=True)
    net = SynthFeatureNet(len(uniq), width=width, feat_dim=feat_dim, size=images.shape[-1])
    yaw, pitch = camera.yaw_pitch(labels)
    pose = torch.stack([yaw, pitch], -1).float()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(steps, 1))))
    t0, stats = time.time(), {}
    for step in range(steps):
        idx = torch.randint(len(images), (batch_size,), generator=rng)
        x = images[idx]
        # Blur the second half with one random sigma: the net must see sharpness.
        sigma = float(torch.rand((), generator=rng)) * MAX_BLUR
        half = batch_size // 2
        x = torch.cat([x[:half], blur(x[half:], sigma)])
        blur_target = torch.cat([torch.zeros(half), torch.full((batch_size - half,), sigma)])
        out = net(x)
        losses = {
            "pose": 10 * F.mse_loss(out["pose"], pose[idx]),
            "identity": F.cross_entropy(out["identity"], id_index[idx]),
            "colour": 10 * F.mse_loss(out["colour"], colour_grid(x)),
            "blur": F.mse_loss(out["blur"], blur_target),
        }
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if not torch.isfinite(loss):
            raise RuntimeError(f"extractor training diverged at step {step}: {({k: v.item() for k, v in losses.items()})}")
        if log_every and (step % log_every == 0 or step == steps - 1):
            acc = (out["identity"].argmax(1) == id_index[idx]).float().mean().item()
            print(f"step {step:5d} | " + " | ".join(f"{k} {v.item():.4f}" for k, v in losses.items())
                  + f" | id acc {acc:.2f} | {time.time() - t0:.0f}s", flush=True)
        stats = {f"loss_{k}": v.item() for k, v in losses.items()}
    net.eval()
    with torch.no_grad():  # quick held-in accuracy on a fixed subset, for the meta
        sub = torch.randperm(len(images), generator=rng)[:512]
        out = net(images[sub])
        stats["identity_accuracy"] = float((out["identity"].argmax(1) == id_index[sub]).float().mean())
        stats["pose_rmse_deg"] = float(math.degrees(float((out["pose"] - pose[sub]).pow(2).mean().sqrt())))
    stats.update({"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "seconds": time.time() - t0,
                  "images": len(images), "identities": len(uniq)})
    return net, stats


# ---------------------------------------------------------------------------------------- cache
# The cached extractor: trained once per machine on synthetic heads of their own seed (none of
# them is a head the generator trains on), like the synthetic training data.
CACHED_SEED = 1_000_003
CACHED_IDENTITIES = 400
CACHED_VIEWS = 4
CACHED_STEPS = 1500


def cached_extractor_path(root: str | Path) -> Path:
    return Path(root) / f"extractor-synthetic-{FORMAT}-{CACHED_IDENTITIES}x{CACHED_VIEWS}-seed{CACHED_SEED}-{CACHED_STEPS}steps.pt"


def ensure_synthetic_extractor(root: str | Path, log: bool = True) -> Path:
    """The synthetic-heads extractor under `root`, trained there on first use (a few minutes on
    CPU, with progress lines) and reused afterwards; several processes wait for one builder."""
    import fcntl

    from cgsgan.data.synthetic import generate_synthetic

    path = cached_extractor_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            return path
        data = generate_synthetic(Path(root) / f"extractor-heads-64px-{CACHED_IDENTITIES}x{CACHED_VIEWS}-seed{CACHED_SEED}",
                                  CACHED_IDENTITIES, CACHED_VIEWS, 64, CACHED_SEED)
        if log:
            print(f"training the synthetic-heads feature extractor once for this machine ({CACHED_STEPS} steps) -> {path}",
                  flush=True)
        images, labels, ids = load_training_set(data, 64)
        with torch.enable_grad():  # callers may be inside no_grad (the trainer's snapshot)
            net, stats = train_extractor(images, labels, ids, steps=CACHED_STEPS,
                                         log_every=CACHED_STEPS // 5 if log else 0)
        save_extractor(net, {"data": str(data), "train": stats, "note": "synthetic-heads features; not comparable with FID"},
                       path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="synthetic-heads dataset folder (cgsgan.data.synthetic)")
    p.add_argument("--out", required=True, help="output file, e.g. extractor.pt")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    data = Path(args.data)
    if not data.exists():
        print(f"error: dataset not found: {data}", file=sys.stderr)
        return 2
    try:
        images, labels, ids = load_training_set(data, args.size)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"training on {len(images)} images of {len(torch.unique(ids))} identities at {args.size}x{args.size}")
    net, stats = train_extractor(images, labels, ids, steps=args.steps, batch_size=args.batch, seed=args.seed,
                                 log_every=max(1, args.steps // 20))
    meta = {"data": str(data.resolve()), "train": stats, "note": "synthetic-heads features; not comparable with FID"}
    out = save_extractor(net, meta, args.out)
    print(f"saved {out} (identity accuracy {stats['identity_accuracy']:.2f}, pose rmse {stats['pose_rmse_deg']:.1f} deg)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
