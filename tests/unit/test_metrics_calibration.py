"""The claim metrics, calibrated: the hand-built generators of tests/unit/metric_heads.py scored
as the main job scores its snapshots (its dataset, its feature network, its sample count), as
ratios to each floor (held-out reals of other identities). A right generator must be able to
reach the floor; a card and floaters must not hide.

    true 3D head   within 2x its floor at the training poses and at the novel poses
    card           at least 5x at the novel poses
    floaters       at least 3x the true head's ratio on colours, within 1.5x of it on white
"""

from __future__ import annotations

import pytest

from cgsgan import config
from cgsgan.data.dataset import ImageDataset
from cgsgan.data.prepare import prepare_data
from cgsgan.metrics.evaluation import MetricContext, evaluate
from cgsgan.metrics.feature_factory import load_features
from cgsgan.metrics.ground_truth import SyntheticTruth
from tests.unit.metric_heads import Billboard, SurfaceHeads, WithFloaters


@pytest.fixture(scope="module")
def scores() -> dict[str, dict[str, float]]:
    cfg = config.tiny()  # the README's main job
    data = prepare_data(cfg)
    reals = ImageDataset(data, resolution=cfg.model.resolution)
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
