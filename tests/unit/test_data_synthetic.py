"""Synthetic heads: determinism, layout, labels, pose spread, camera conventions of the ray caster."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from cgsgan import camera
from cgsgan.data import synthetic
from cgsgan.data.synthetic import Heads, generate_synthetic, raycast, read_info, render_identity


def all_files(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = all_files(generate_synthetic(tmp_path / "a", identities=3, views=2, resolution=32, seed=5))
    b = all_files(generate_synthetic(tmp_path / "b", identities=3, views=2, resolution=32, seed=5))
    c = all_files(generate_synthetic(tmp_path / "c", identities=3, views=2, resolution=32, seed=6))
    assert a == b
    assert set(a) == set(c)
    images = [k for k in a if k.startswith("32/")]
    assert len(images) == 6
    assert all(a[k] != c[k] for k in images)  # other heads and other poses
    assert json.loads(a["dataset.json"])["labels"] != json.loads(c["dataset.json"])["labels"]


def test_identity_does_not_depend_on_how_many_are_generated():
    labels = camera.yaw_sweep(2)
    head_small = synthetic.sample_head(0, 3)[0]
    assert torch.equal(head_small.centre, synthetic.sample_head(0, 3)[0].centre)
    assert torch.equal(synthetic.sample_views(0, 3, 2), synthetic.sample_views(0, 3, 5)[:2])
    a, _ = render_identity(0, 3, labels, 16)
    b, _ = render_identity(0, 4, labels, 16)
    assert not torch.equal(a, b)


def test_layout_labels_and_identities(synthetic_dataset):
    meta = json.loads((synthetic_dataset / "dataset.json").read_text())
    names = [n for n, _ in meta["labels"]]
    assert len(names) == 256 and len(set(names)) == 256
    assert names[0] == "64/00000.png" and names[-1] == "64/00255.png"
    ids = meta["identities"]
    assert set(ids) == set(names)
    assert sorted(np.bincount(list(ids.values())).tolist()) == [4] * 64  # 64 identities x 4 views
    assert meta["synthetic"] == read_info(synthetic_dataset)
    assert read_info(synthetic_dataset)["seed"] == 0 and read_info(synthetic_dataset)["identities"] == 64

    labels = torch.tensor([v for _, v in meta["labels"]])
    assert labels.shape == (256, 25) and torch.isfinite(labels).all()
    c2w, intr = camera.split_label(labels)
    rot = c2w[:, :3, :3]
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3).expand(256, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(256), atol=1e-5)  # right-handed
    assert torch.allclose(camera.camera_position(labels).norm(dim=-1), torch.full((256,), camera.RADIUS), atol=1e-4)
    assert torch.allclose(intr, camera.intrinsics(batch=256))
    assert torch.equal(c2w[:, 3], torch.tensor([0.0, 0, 0, 1]).expand(256, 4))

    for name in names[:3]:
        img = Image.open(synthetic_dataset / name)
        mask = Image.open(synthetic_dataset / "mask" / name.split("/")[1])
        assert img.mode == "RGB" and img.size == (64, 64)
        assert mask.mode == "L" and mask.size == (64, 64)
        im, m = np.asarray(img), np.asarray(mask)
        assert (im[0, 0] == 255).all() and m[0, 0] == 0  # white background, empty mask in the corner
        assert (im[m == 0] == 255).all()  # RGB is composited on white


def test_pose_spread_is_as_specified(synthetic_dataset):
    meta = json.loads((synthetic_dataset / "dataset.json").read_text())
    yaw, pitch = camera.yaw_pitch(torch.tensor([v for _, v in meta["labels"]]))
    assert 0.2 < yaw.std() < 0.4, yaw.std()
    assert 0.08 < pitch.std() < 0.22, pitch.std()
    assert abs(yaw.mean()) < 0.08 and abs(pitch.mean()) < 0.05
    assert yaw.abs().max() <= synthetic.YAW_LIMIT + 1e-5


def test_a_wider_pose_spread_turns_the_same_views_further():
    """data.synthetic_yaw_std / _limit: the same normal draws scaled, clamped at the new limit;
    pitch and the order of views unchanged."""
    yaw0, pitch0 = camera.yaw_pitch(torch.cat([synthetic.sample_views(0, i, 4) for i in range(200)]))
    yaw1, pitch1 = camera.yaw_pitch(torch.cat([synthetic.sample_views(0, i, 4, 0.8, 1.5) for i in range(200)]))
    assert torch.allclose(pitch0, pitch1, atol=1e-5)
    inside = yaw1.abs() < 1.5 - 1e-4
    assert torch.allclose(yaw1[inside], yaw0[inside] * 0.8 / 0.3, atol=1e-4)
    assert float(yaw1.abs().max()) <= 1.5 + 1e-5 and 0.65 < float(yaw1.std()) < 0.85
    assert float((yaw1.abs() > math.radians(60)).float().mean()) > 0.15  # FFHQ-like: ~1 in 1,000
    assert float((yaw0.abs() > math.radians(60)).float().mean()) < 0.01


def test_the_pose_spread_is_part_of_a_synthetic_dataset_and_its_cache_name(tmp_path):
    from cgsgan.config import CGSGANConfig
    from cgsgan.data.prepare import synthetic_data_dir

    wide = generate_synthetic(tmp_path / "wide", identities=2, views=2, resolution=32, seed=0, yaw_std=0.8, yaw_limit=1.5)
    assert {read_info(wide)[k] for k in ("yaw_std", "yaw_limit")} == {0.8, 1.5}
    default = generate_synthetic(tmp_path / "default", identities=2, views=2, resolution=32, seed=0)
    assert "yaw_std" not in read_info(default)  # datasets written before the setting still match
    # the same folder asked for with another spread is written again, not reused
    again = generate_synthetic(tmp_path / "wide", identities=2, views=2, resolution=32, seed=0)
    assert "yaw_std" not in read_info(again)
    with pytest.raises(ValueError, match="yaw_limit=1.7"):
        generate_synthetic(tmp_path / "x", identities=2, views=2, resolution=32, yaw_limit=1.7)
    cfg = CGSGANConfig()
    plain = synthetic_data_dir(cfg)
    cfg.data.synthetic_yaw_std, cfg.data.synthetic_yaw_limit = 0.8, 1.5
    assert synthetic_data_dir(cfg).name == plain.name + "-yaw0.8-1.5"


def test_frontal_head_is_symmetric_and_centred_and_a_side_view_is_not():
    front = camera.frontal_label(3)
    for identity in range(3):
        rgb, mask = render_identity(1, identity, front[:1], 64)
        assert mask[0, 0, 32, 32] > 0.99 and mask[0, 0, 0, 0] == 0
        assert (rgb - rgb.flip(-1)).abs().mean() < 0.01
        assert (mask - mask.flip(-1)).abs().mean() < 0.01
    side = camera.make_label(camera.pose_from_angles(torch.tensor([0.5]), torch.tensor([0.0])), camera.intrinsics())
    rgb, mask = render_identity(1, 0, side, 64)
    assert (mask - mask.flip(-1)).abs().mean() > 0.03


def one_sphere(centre, radius: float, batch: int) -> Heads:
    k = synthetic.NUM_PRIMS
    head = Heads(
        centre=torch.zeros(k, 3), radii=torch.ones(k, 3), rot=torch.eye(3).repeat(k, 1, 1), colour=torch.ones(k, 3),
        clip_n=torch.zeros(k, 3), clip_d=-torch.ones(k), active=torch.zeros(k, dtype=torch.bool),
    )
    head.centre[0], head.radii[0], head.active[0] = torch.tensor(centre), radius, True
    return Heads.stack([head] * batch)


def test_rays_follow_the_camera_conventions():
    """A small sphere lands where camera.project puts its centre (pixel centres at half-integers)."""
    p = [0.1, -0.06, 0.15]
    g = torch.Generator().manual_seed(0)
    labels = camera.sample_gaussian_poses(6, generator=g)
    res = 64
    _, mask = raycast(one_sphere(p, 0.03, 6), labels, res, supersample=4)
    m = mask[:, 0]
    ys, xs = torch.meshgrid(torch.arange(res) + 0.5, torch.arange(res) + 0.5, indexing="ij")
    centroid = torch.stack([(m * xs).sum((1, 2)), (m * ys).sum((1, 2))], -1) / m.sum((1, 2))[:, None]
    expected = camera.project(torch.tensor([p]).expand(6, 1, 3), labels, res, res)[:, 0]
    assert (centroid - expected).abs().max() < 0.25, (centroid, expected)
    # Disc area matches the pinhole model: radius ~ f * r / distance (in pixels).
    dist = (camera.camera_position(labels) - torch.tensor(p)).norm(dim=-1)
    area = m.sum((1, 2))
    expected_area = math.pi * (camera.FOCAL * res * 0.03 / dist) ** 2
    assert torch.allclose(area, expected_area, rtol=0.08)


def test_render_identity_reproduces_the_stored_images(synthetic_dataset):
    meta = json.loads((synthetic_dataset / "dataset.json").read_text())
    picks = [0, 5, 130]
    labels = torch.tensor([meta["labels"][i][1] for i in picks])
    for i, label in zip(picks, labels):
        name = meta["labels"][i][0]
        rgb, mask = render_identity(0, meta["identities"][name], label[None], 64)
        img, m = synthetic.to_uint8_on_white(rgb, mask)
        stored = np.asarray(Image.open(synthetic_dataset / name))
        stored_mask = np.asarray(Image.open(synthetic_dataset / "mask" / name.split("/")[1]))
        assert np.abs(img[0].astype(int) - stored).max() <= 1
        assert np.abs(m[0].astype(int) - stored_mask).max() <= 1
        assert ((rgb >= 0) & (rgb <= 1)).all() and rgb.shape == (1, 3, 64, 64) and mask.shape == (1, 1, 64, 64)


def test_generate_skips_existing_regenerates_other_params_and_refuses_foreign_folders(tmp_path):
    out = generate_synthetic(tmp_path / "d", identities=2, views=2, resolution=16, seed=0)
    stamp = (out / "16" / "00000.png").stat().st_mtime_ns
    assert generate_synthetic(out, identities=2, views=2, resolution=16, seed=0) == out
    assert (out / "16" / "00000.png").stat().st_mtime_ns == stamp  # skipped
    generate_synthetic(out, identities=3, views=2, resolution=16, seed=0)
    assert read_info(out)["identities"] == 3 and len(list((out / "16").iterdir())) == 6
    assert not any(p.name.startswith(".d.tmp") for p in tmp_path.iterdir())  # no leftovers
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("x")
    with pytest.raises(ValueError, match="not a synthetic-heads dataset"):
        generate_synthetic(foreign, identities=2, views=2, resolution=16, seed=0)
    assert (foreign / "precious.txt").read_text() == "x"
    with pytest.raises(ValueError, match="identities"):
        generate_synthetic(tmp_path / "e", identities=0, views=2, resolution=16, seed=0)
    with pytest.raises(ValueError, match="not a synthetic-heads dataset"):
        read_info(foreign)


def test_cli_prints_count_and_seconds(tmp_path, capsys):
    assert synthetic.main(["--out", str(tmp_path / "cli"), "--identities", "2", "--views", "3",
                           "--resolution", "16", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "6 images" in out and " s" in out
    assert read_info(tmp_path / "cli") == {"identities": 2, "views": 3, "resolution": 16, "seed": 1,
                                           "supersample": synthetic.SUPERSAMPLE, "version": synthetic.VERSION}
