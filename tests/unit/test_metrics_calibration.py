"""The claim metrics, calibrated: the hand-built generators of tests/unit/metric_heads.py scored
as the main job scores its snapshots (its dataset, its feature network, its sample count), as
ratios to each floor (held-out reals of other identities). A right generator must be able to
reach the floor; a card and floaters must not hide.

    true 3D head   within 2x its floor at the training poses and at the novel poses
    card           at least 5x at the novel poses
    floaters       at least 3x the true head's ratio on colours, within 1.5x of it on white
"""

from __future__ import annotations

import math

import pytest

from cgsgan import config
from cgsgan.data.dataset import ImageDataset
from cgsgan.data.prepare import prepare_data
from cgsgan.metrics.evaluation import MetricContext, evaluate
from cgsgan.metrics.feature_factory import load_features
from cgsgan.metrics.ground_truth import SyntheticTruth
from tests.unit.metric_heads import Billboard, SurfaceHeads, WithFloaters


@pytest.fixture(scope="module")
def reals() -> ImageDataset:
    cfg = config.tiny()  # the README's main job
    return ImageDataset(prepare_data(cfg), resolution=cfg.model.resolution)


@pytest.fixture(scope="module")
def scores(reals) -> dict[str, dict[str, float]]:
    cfg = config.tiny()
    data = reals.path
    features = load_features(cfg.train.feature_extractor, size=cfg.model.resolution)
    ctx = MetricContext.of_reals(reals, features, cfg.model.resolution, cfg.train.metric_samples,
                                 truth=SyntheticTruth.of_dataset(data), batch_size=64)
    n = cfg.data.synthetic_identities
    head = SurfaceHeads(seed=cfg.data.synthetic_seed, num_identities=n, resolution=cfg.model.resolution)
    gens = {"true head": head, "card": Billboard(seed=cfg.data.synthetic_seed, num_identities=n),
            "floaters": WithFloaters(head)}
    s = features.suffix
    out = {}
    for name, gen in gens.items():
        r = evaluate(ctx.for_generator(gen), ["fid", "fid_novel", "fid_bg"])
        out[name] = {"train": r[f"fid_{s}_ratio"], "novel": r[f"fid_{s}_novel_ratio"], "bg": r[f"fid_{s}_bg_ratio"]}
    print(out)
    return out


def test_a_true_3d_head_is_within_2x_its_floor_at_the_training_and_the_novel_poses(scores):
    head = scores["true head"]
    assert head["train"] <= 2.0 and head["novel"] <= 2.0, scores


def test_a_card_is_at_least_5x_its_floor_at_the_novel_poses(scores):
    assert scores["card"]["novel"] >= 5.0, scores
    assert scores["card"]["novel"] >= 5 * scores["true head"]["novel"], scores


def test_floaters_show_on_colours_and_hide_on_white(scores):
    head, floaters = scores["true head"], scores["floaters"]
    assert floaters["bg"] >= 3 * head["bg"], scores
    assert floaters["train"] <= 1.5 * head["train"], scores


def test_the_main_jobs_heads_are_seen_from_the_side(reals, scores):
    """The testbed pose spread: about a fifth of the views beyond 60 degrees, so a card gives
    itself away at the training poses too (with the FFHQ-like spread it scored as a true head there)."""
    from cgsgan import camera

    yaw, _ = camera.yaw_pitch(reals.labels)
    side = float((yaw.abs() > math.radians(60)).float().mean())
    assert 0.1 < side < 0.35, side
    assert scores["card"]["train"] >= 3 * scores["true head"]["train"], scores
