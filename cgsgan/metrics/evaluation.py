"""The metric registry: name -> a function over one `MetricContext`, and `evaluate` running a chosen
set of them into one flat dict of floats (what the trainer logs under metrics/ and the CLI prints).

Requested names (train.snapshot_metrics, --metrics) and the keys they produce; s is the feature
network's suffix ("_synth", "_rand", or "" for Inception), see metrics/features.py:

    fid          fid{s}, fid{s}_floor, fid{s}_ratio     dataset cameras, on white
    kid          kid{s}, kid{s}_std                     the same images; unbiased KID, std over subsets
    fid3d        fid3d{s}, fid3d{s}_ratio               G conditioned on the frontal camera, same floor
    fid_novel    fid{s}_novel, ..._floor, ..._ratio
                 rendered at novel poses (yaw 60-90, pitch +-25 degrees) against ground-truth
                 synthetic heads at the same poses (synthetic heads only)
    kid_novel    kid{s}_novel, kid{s}_novel_std         the same images
    fid_bg       fid{s}_bg, ..._floor, ..._ratio
                 generated heads and masked reals on the same solid non-white colours (needs masks)
    kid_bg       kid{s}_bg, kid{s}_bg_std               the same images
(a kid_* beside its fid_* costs only the KID itself: the features are shared.)
    sensitivity  sensitivity, sensitivity/<attr>        0 for the camera-free generator
    psnr_cond    psnr_cond                              dB, capped at 100 (= identical renders)
    depth_consistency  depth_consistency[/median, /valid_fraction]
    yaw_bins     yaw_fd{s}/binI, yaw_kid{s}/binI, yaw_bins/binI_lo_deg, yaw_bins/binI_hi_deg
    geometry     geometry, geometry/silhouette, geometry/depth
                 silhouettes and depth profiles at yaw -90..90 against the ground truth's, no
                 feature network: 1 = the ground truth's geometry, 0 = a card (metrics/geometry.py;
                 synthetic heads only; ctx.heads heads a side)

Floors: where the context has a held-out set of reals (the trainer's: other identities than the
reference's, see `split_reference`), each FID comes with the distance a perfect generator would
reach, that of held-out reals with as many images as the generated side, and the ratio to it.
Everything on the real side (the split, the features, the floors) depends on the dataset and
the feature network only, never on the training seed, and is computed once per context.

`compared_metrics()` lists, typed, the columns an ablation compares and which way is better.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Callable, Protocol, Sequence

import torch

from cgsgan.metrics.consistency import conditioning_psnr, conditioning_sensitivity, depth_consistency
from cgsgan.metrics.features import FeatureExtractor, metric_name
from cgsgan.metrics.frechet import fid_from_features
from cgsgan.metrics.geometry import GeometryScale, generated_descriptors, view_resolution
from cgsgan.metrics.ground_truth import SyntheticTruth, novel_poses, palette_colours, yaw_bin_distances
from cgsgan.metrics.kid import kid
from cgsgan.metrics.sampling import GaussianGenerator, generated_features, real_features

# The real side never follows the training seed: one fixed seed for the split, the real subsets
# and the poses, so every trial of a sweep is measured against the very same reals.
EVAL_SEED = 0
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


class Better(StrEnum):
    lower = "lower"
    higher = "higher"


# ---------------------------------------------------------------------------------------- context
class RealSet(Protocol):
    """Reals the metrics read: an ImageDataset, or an ItemSubset of one."""

    labels: torch.Tensor  # [M, 25]
    identities: torch.Tensor  # [M] int64, -1 where unknown

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> dict: ...  # {"image" [3, H, W] in [-1, 1], "mask" [1, H, W], ...}


class ItemSubset:
    """The items `indices` of a dataset, with their labels and identities (what the metrics read)."""

    def __init__(self, dataset, indices: torch.Tensor) -> None:
        self.dataset, self.indices = dataset, indices
        self.background = getattr(dataset, "background", "off")
        self.stored_background = getattr(dataset, "stored_background", None)
        self.has_masks = getattr(dataset, "has_masks", True)
        self.path = getattr(dataset, "path", None)
        self.labels = dataset.labels[indices]
        self.identities = dataset.identities[indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.dataset[int(self.indices[i])]


def split_reference(dataset, seed: int = EVAL_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Item indices of the reference and the held-out half: by identity when every item has one
    (no head in both halves). Depends on the dataset (and `seed`, fixed by default) only."""
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


@dataclass
class MetricContext:
    """Everything a metric reads. Build one per run (`reals` is kept across generators) and give
    each generator its own with `for_generator`.

    reference: the reals compared with (len, __getitem__ -> {"image", "mask", ...}, .labels [M, 25]
    drawn as cameras, .identities [M]); held_out: other reals, for the floors (None: no floors);
    truth: the synthetic heads' ground truth (fid_novel, yaw_bins; None for other datasets).
    samples: generated images per distribution metric; heads: heads per 3D metric;
    num_real: reference images used (None: all of them).
    """

    extractor: FeatureExtractor
    reference: RealSet
    resolution: int
    samples: int
    heads: int = 16
    held_out: RealSet | None = None
    truth: SyntheticTruth | None = None
    num_real: int | None = None
    gen: GaussianGenerator | None = None
    seed: int = EVAL_SEED
    batch_size: int = 64
    backend: str = "auto"
    yaw_bins: int = 5
    reals: dict = field(default_factory=dict)  # real-side features and floors, for every generator
    fakes: dict = field(default_factory=dict)  # generated features of this context's generator

    @classmethod
    def of_reals(cls, reals, extractor: FeatureExtractor, resolution: int, samples: int, floors: bool = True,
                 **settings) -> "MetricContext":  # fmt: skip
        """The context of a dataset: its reference half compared with and its held-out half for the
        floors (`split_reference`), or with floors=False every real as the reference and no floors.
        `settings`: the other fields (truth, heads, seed, ...)."""
        if not floors:
            return cls(extractor=extractor, reference=reals, resolution=resolution, samples=samples, **settings)
        ref, held = split_reference(reals)
        return cls(extractor=extractor, reference=ItemSubset(reals, ref), held_out=ItemSubset(reals, held),
                   resolution=resolution, samples=samples, **settings)  # fmt: skip

    def for_generator(self, gen: GaussianGenerator) -> "MetricContext":
        return dataclasses.replace(self, gen=gen, fakes={})

    @property
    def labels(self) -> torch.Tensor:
        return self.reference.labels.detach().float().cpu()


# ---------------------------------------------------------------------------------------- views
@dataclass(frozen=True)
class View:
    """How both sides of one distance are drawn: the generated cameras, conditioning and background."""

    name: str  # "train", "frontal", "novel", "bg"
    condition: str = "own"
    novel: bool = False
    coloured: bool = False


TRAIN, FRONTAL, NOVEL, BG = View("train"), View("frontal", condition="frontal"), View("novel", novel=True), View(
    "bg", coloured=True)


def _identities(subset, n: int, seed: int) -> list[int]:
    ids = torch.unique(subset.identities)
    if len(ids) == 0 or bool((ids < 0).any()):
        raise ValueError("fid_novel needs the identities of the reals (the synthetic heads' dataset.json)")
    return ids[torch.randint(len(ids), (n,), generator=torch.Generator().manual_seed(seed))].tolist()


def _truth_features(ctx: MetricContext, subset, n: int, seed: int) -> torch.Tensor:
    """Ground-truth renders of identities of `subset` at the novel poses [n] -> features [n, dim]."""
    if ctx.truth is None:
        raise ValueError("fid_novel needs ground truth at novel poses: only the synthetic heads have it (data=synthetic)")
    poses, ids = novel_poses(n, ctx.seed), _identities(subset, n, seed)
    b = ctx.batch_size
    return torch.cat([ctx.extractor(ctx.truth.render(ids[i : i + b], poses[i : i + b], ctx.resolution))
                      for i in range(0, n, b)])


def _real_side(ctx: MetricContext, view: View) -> torch.Tensor:
    """Features of the reference side of `view` (cached in ctx.reals)."""
    key = ("real", view.novel, view.coloured, ctx.extractor.suffix, ctx.extractor.dim, ctx.samples, ctx.num_real)
    if key not in ctx.reals:
        if view.novel:
            ctx.reals[key] = _truth_features(ctx, ctx.reference, ctx.samples, ctx.seed)
        else:
            n = min(ctx.num_real or len(ctx.reference), len(ctx.reference))
            colours = palette_colours(n) if view.coloured else None
            ctx.reals[key] = real_features(ctx.reference, ctx.extractor, n, seed=ctx.seed, batch_size=ctx.batch_size,
                                           colours=colours)
    return ctx.reals[key]


def _floor(ctx: MetricContext, view: View) -> float | None:
    """FD between the reference side and as many held-out reals as generated images (cached)."""
    if ctx.held_out is None:
        return None
    key = ("floor", view.novel, view.coloured, ctx.extractor.suffix, ctx.extractor.dim, ctx.samples, ctx.num_real)
    if key not in ctx.reals:
        n = min(ctx.samples, len(ctx.held_out))
        if view.novel:
            held = _truth_features(ctx, ctx.held_out, ctx.samples, ctx.seed + 1)
        else:
            held = real_features(ctx.held_out, ctx.extractor, n, seed=ctx.seed + 1, batch_size=ctx.batch_size,
                                 colours=palette_colours(n) if view.coloured else None)
        ctx.reals[key] = fid_from_features(_real_side(ctx, view), held)
    return ctx.reals[key]


def _fake_side(ctx: MetricContext, view: View) -> torch.Tensor:
    """Features of ctx.samples generated images of `view` (cached in ctx.fakes)."""
    if ctx.gen is None:
        raise ValueError("the context has no generator: use ctx.for_generator(gen)")
    if view.name not in ctx.fakes:
        if view is FRONTAL and getattr(ctx.gen, "camera_conditioned", None) is False:
            # The camera-free generator ignores c: conditioning on the frontal camera renders the
            # very same images (same z, same cameras), so reuse them instead of rendering twice.
            ctx.fakes[view.name] = _fake_side(ctx, TRAIN)
            return ctx.fakes[view.name]
        n = ctx.samples
        ctx.fakes[view.name] = generated_features(
            ctx.gen, ctx.extractor, ctx.labels, n, ctx.resolution, condition=view.condition, seed=ctx.seed + 1,
            batch_size=ctx.batch_size, backend=ctx.backend, poses=novel_poses(n, ctx.seed) if view.novel else None,
            backgrounds=palette_colours(n) if view.coloured else None)
    return ctx.fakes[view.name]


def _fid(ctx: MetricContext, view: View, name: str, floor_view: View | None = None) -> dict[str, float]:
    fid = fid_from_features(_real_side(ctx, view), _fake_side(ctx, view))
    out = {name: fid}
    floor = _floor(ctx, floor_view or view)
    if floor is not None:
        if floor_view is None:  # fid3d shares fid's floor and reports only its ratio
            out[f"{name}_floor"] = floor
        out[f"{name}_ratio"] = fid / floor if floor > 0 else math.inf
    return out


def _kid(ctx: MetricContext, view: View, name: str) -> dict[str, float]:
    real, fake = _real_side(ctx, view), _fake_side(ctx, view)
    k = kid(real, fake, num_subsets=KID_SUBSETS, subset_size=min(KID_SUBSET_SIZE, len(real), len(fake)), seed=ctx.seed)
    return {name: k.mean, f"{name}_std": k.std}


# ---------------------------------------------------------------------------------------- the metrics
def fid_train(ctx: MetricContext) -> dict[str, float]:
    return _fid(ctx, TRAIN, metric_name("fid", ctx.extractor))


def kid_train(ctx: MetricContext) -> dict[str, float]:
    return _kid(ctx, TRAIN, metric_name("kid", ctx.extractor))


def fid3d(ctx: MetricContext) -> dict[str, float]:
    return _fid(ctx, FRONTAL, metric_name("fid3d", ctx.extractor), floor_view=TRAIN)


def fid_novel(ctx: MetricContext) -> dict[str, float]:
    """Novel views: G(z, c) seen from c at poses the training data never shows (c is the render
    camera, as a camera-conditioned generator is used; a camera-free one ignores it), against
    ground-truth synthetic heads of the reference identities at the same poses."""
    return _fid(ctx, NOVEL, metric_name("fid", ctx.extractor) + "_novel")


def kid_novel(ctx: MetricContext) -> dict[str, float]:
    return _kid(ctx, NOVEL, metric_name("kid", ctx.extractor) + "_novel")


def fid_bg(ctx: MetricContext) -> dict[str, float]:
    """Backgrounds: generated heads and masked reals pasted on the same solid non-white colours
    (sample i on colour i mod 8 on both sides), so what white hides (white floaters) shows."""
    return _fid(ctx, BG, metric_name("fid", ctx.extractor) + "_bg")


def kid_bg(ctx: MetricContext) -> dict[str, float]:
    return _kid(ctx, BG, metric_name("kid", ctx.extractor) + "_bg")


def sensitivity(ctx: MetricContext) -> dict[str, float]:
    return conditioning_sensitivity(ctx.gen, ctx.labels, num_z=max(2, min(ctx.heads, 16)), num_cams=8, seed=ctx.seed)


def psnr_cond(ctx: MetricContext) -> dict[str, float]:
    return {"psnr_cond": conditioning_psnr(ctx.gen, ctx.labels, ctx.resolution, num=ctx.heads, seed=ctx.seed,
                                           batch_size=min(ctx.batch_size, 16), backend=ctx.backend)}


def depth(ctx: MetricContext) -> dict[str, float]:
    return depth_consistency(ctx.gen, ctx.labels, ctx.resolution, num=ctx.heads, seed=ctx.seed,
                             batch_size=min(ctx.batch_size, 16), backend=ctx.backend)


def yaw_bins(ctx: MetricContext) -> dict[str, float]:
    if ctx.truth is None:
        raise ValueError("yaw_bins needs the synthetic heads' ground truth (data=synthetic)")
    truth, res = ctx.truth, ctx.resolution
    bins = yaw_bin_distances(ctx.gen, ctx.extractor, ctx.labels, lambda i, c: truth.render_identity(i, c, res),
                             truth.num_identities, res, num_bins=ctx.yaw_bins,
                             per_bin=min(256, max(16, ctx.samples // ctx.yaw_bins)), seed=ctx.seed,
                             batch_size=ctx.batch_size, backend=ctx.backend)
    out: dict[str, float] = {}
    for b in bins:
        out[f"{metric_name('yaw_fd', ctx.extractor)}/bin{b.index}"] = b.fd
        out[f"{metric_name('yaw_kid', ctx.extractor)}/bin{b.index}"] = b.kid
        out[f"yaw_bins/bin{b.index}_lo_deg"] = b.yaw_lo_deg
        out[f"yaw_bins/bin{b.index}_hi_deg"] = b.yaw_hi_deg
    return out


def geometry(ctx: MetricContext) -> dict[str, float]:
    if ctx.truth is None:
        raise ValueError("geometry needs the synthetic heads' ground truth (data=synthetic)")
    if ctx.held_out is None:
        raise ValueError("geometry needs held-out reals (its floor: ground-truth heads of other identities)")
    res = view_resolution(ctx.resolution)
    key = ("geometry", ctx.heads, ctx.seed, res)
    if key not in ctx.reals:
        ctx.reals[key] = GeometryScale.build(ctx.truth.seed, _identities(ctx.reference, ctx.heads, ctx.seed),
                                             _identities(ctx.held_out, ctx.heads, ctx.seed + 1), res)
    scale = ctx.reals[key]
    heads = generated_descriptors(ctx.gen, ctx.heads, scale.resolution, seed=ctx.seed + 1, backend=ctx.backend,
                                  batch_size=min(ctx.batch_size, 16))
    return scale.score(heads)


# ---------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Column:
    """One compared column: `key` as logged (the trainer prefixes "metrics/"), e.g. "fid_synth_novel"."""

    key: str
    label: str
    better: Better
    request: str  # the registry name that produces it (what train.snapshot_metrics must list)


@dataclass(frozen=True)
class Compared:
    """A compared output of a metric, before the feature network names it: key = base{s}tail."""

    base: str  # "fid", "kid", ... (feature-network dependent) or a plain key ("sensitivity")
    tail: str
    label: str
    better: Better
    by_features: bool = True

    def column(self, request: str, suffix: str) -> Column:
        head = (f"{self.base}_{suffix}" if suffix else self.base) if self.by_features else self.base
        return Column(head + self.tail, self.label, self.better, request)


@dataclass(frozen=True)
class Metric:
    compute: Callable[[MetricContext], dict[str, float]]
    compared: tuple[Compared, ...] = ()
    needs_truth: bool = False  # only on the synthetic heads


METRICS: dict[str, Metric] = {
    "fid": Metric(fid_train, (Compared("fid", "", "FID", Better.lower),)),
    "kid": Metric(kid_train, (Compared("kid", "", "KID", Better.lower),)),
    "fid3d": Metric(fid3d, (Compared("fid3d", "", "FID3D (frontal-conditioned)", Better.lower),)),
    "fid_novel": Metric(fid_novel, (Compared("fid", "_novel", "FID novel views (yaw 60-90)", Better.lower),),
                        needs_truth=True),
    # Not compared by default (the FID beside it asks the same question); request them for the KID.
    "kid_novel": Metric(kid_novel, needs_truth=True),
    "fid_bg": Metric(fid_bg, (Compared("fid", "_bg", "FID on coloured backgrounds", Better.lower),)),
    "kid_bg": Metric(kid_bg),
    "sensitivity": Metric(sensitivity, (Compared("sensitivity", "", "camera sensitivity", Better.lower, False),)),
    "psnr_cond": Metric(psnr_cond, (Compared("psnr_cond", "", "psnr_cond (dB)", Better.higher, False),)),
    "depth_consistency": Metric(depth),
    "yaw_bins": Metric(yaw_bins, needs_truth=True),
    "geometry": Metric(geometry, (Compared("geometry", "", "geometry (1 = ground truth, 0 = card)", Better.higher,
                                           False),), needs_truth=True),
}


def compared_metrics(suffix: str = "synth", names: Sequence[str] | None = None) -> list[Column]:
    """The columns an ablation compares, in registry order, each with which way is better: for the
    metrics `names` (default: every metric that has compared outputs) and the feature network with
    `suffix` ("synth", "rand", "" for Inception). The sweep requests `{c.request for c in columns}`
    in train.snapshot_metrics and reads "metrics/" + c.key."""
    chosen = check_metrics(names) if names is not None else list(METRICS)
    return [c.column(n, suffix) for n in chosen for c in METRICS[n].compared]


def check_metrics(metrics: Sequence[str] | str, ground_truth: bool | None = None) -> list[str]:
    """'fid,kid' or ['fid', 'kid'] -> validated list; unknown names raise a ValueError listing the
    valid ones. ground_truth=False (a dataset other than the synthetic heads) also refuses the
    metrics that need the synthetic ground truth."""
    names = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else [m.strip() for m in metrics]
    names = [m for m in names if m]
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}")
    if not names:
        raise ValueError(f"no metrics given; choose from {', '.join(METRICS)}")
    if ground_truth is False and (need := [m for m in names if METRICS[m].needs_truth]):
        raise ValueError(f"{', '.join(need)} need the synthetic heads' ground truth (data=synthetic)")
    return names


@torch.no_grad()
def evaluate(ctx: MetricContext, metrics: Sequence[str] | str) -> dict[str, float]:
    """The metrics `metrics` of ctx.gen as one flat dict of floats (keys in the module docstring)."""
    out: dict[str, float] = {}
    for name in check_metrics(metrics, ground_truth=ctx.truth is not None):
        out.update(METRICS[name].compute(ctx))
    return {k: float(v) for k, v in out.items()}


def format_table(results: dict[str, float]) -> str:
    """Aligned two-column text table of a results dict."""
    width = max((len(k) for k in results), default=6)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 12}"]
    for k, v in results.items():
        text = "nan" if math.isnan(v) else f"{v:.6g}"
        lines.append(f"{k:<{width}}  {text}")
    return "\n".join(lines)
