"""ImageDataset (FFHQC/EG3D layout): loading, zip == folder, xflip, index lists, backgrounds, validation."""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cgsgan import camera
from cgsgan.data.backgrounds import composite, sample_backgrounds
from cgsgan.data.dataset import (
    REBALANCING_LIST,
    DataError,
    ImageDataset,
    check_dataset,
    find_rebalancing_list,
    load_labels,
)
from cgsgan.data.synthetic import generate_synthetic, render_identity


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """16 images (4 identities x 4 views) at 32x32."""
    return generate_synthetic(tmp_path_factory.mktemp("tiny") / "heads", identities=4, views=4, resolution=32, seed=3)


@pytest.fixture
def broken(tiny, tmp_path) -> Path:
    """A private copy of `tiny` to break."""
    return Path(shutil.copytree(tiny, tmp_path / "copy"))


def make_zip(root: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w") as z:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(root).as_posix())
    return out


def assert_same_items(a: ImageDataset, b: ImageDataset) -> None:
    assert len(a) == len(b)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert set(x) == set(y) == {"image", "mask", "label", "identity", "index"}
        for k in ("image", "mask", "label", "identity"):
            assert torch.equal(x[k], y[k]), (i, k)
        assert x["index"] == y["index"] == i


def test_synthetic_output_loads_like_ffhqc(synthetic_dataset):
    ds = ImageDataset(synthetic_dataset, resolution=64)
    meta = json.loads((synthetic_dataset / "dataset.json").read_text())
    assert len(ds) == 256 and ds.resolution == 64 and ds.has_masks
    assert ds.labels.shape == (256, 25) and ds.labels.dtype == torch.float32
    assert ds.identities.dtype == torch.int64 and ds.identities.unique().numel() == 64
    item = ds[7]
    name = ds.names[7]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 64, 64) and item["mask"].dtype == torch.float32
    assert item["label"].shape == (25,) and item["identity"].dtype == torch.int64 and item["index"] == 7
    assert int(item["identity"]) == meta["identities"][name]
    assert torch.equal(item["label"], torch.tensor(dict(meta["labels"])[name]))
    pixels = torch.from_numpy(np.array(Image.open(synthetic_dataset / name))).permute(2, 0, 1).float()
    assert torch.allclose(item["image"], pixels / 255 * 2 - 1)
    mask = torch.from_numpy(np.array(Image.open(synthetic_dataset / "mask" / Path(name).name))).float() / 255
    assert torch.equal(item["mask"][0], mask)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))  # default collate works
    assert batch["image"].shape == (4, 3, 64, 64) and batch["identity"].shape == (4,)


def test_zip_folder_and_resolution_folder_give_identical_items(tiny, tmp_path):
    folder = ImageDataset(tiny)
    zipped = ImageDataset(make_zip(tiny, tmp_path / "tiny.zip"))
    one_res = ImageDataset(tiny / "32")  # FFHQC style: the folder of one resolution, dataset.json above it
    lazy = ImageDataset(tiny, cache=False)
    assert_same_items(folder, zipped)
    assert_same_items(folder, one_res)
    assert_same_items(folder, lazy)


def test_labels_named_relative_to_the_image_folder_and_no_masks(tiny, tmp_path):
    # EG3D/FFHQC-style names without the resolution folder; no mask folder at all.
    root = Path(shutil.copytree(tiny, tmp_path / "plain"))
    shutil.rmtree(root / "mask")
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = [[n.split("/", 1)[1], v] for n, v in meta["labels"]]
    meta.pop("identities")
    (root / "dataset.json").write_text(json.dumps(meta))
    ds = ImageDataset(root)
    ref = ImageDataset(tiny)
    assert not ds.has_masks and len(ds) == 16
    assert torch.equal(ds[3]["image"], ref[3]["image"]) and torch.equal(ds[3]["label"], ref[3]["label"])
    assert torch.equal(ds[3]["mask"], torch.ones(1, 32, 32)) and int(ds[3]["identity"]) == -1


def test_xflip_appends_mirrored_images_and_labels(tiny):
    plain, flipped = ImageDataset(tiny), ImageDataset(tiny, xflip=True)
    n = len(plain)
    assert len(flipped) == 2 * n and flipped.labels.shape == (2 * n, 25)
    for i in (0, 5):
        a, b = plain[i], flipped[n + i]
        assert torch.equal(b["image"], a["image"].flip(-1)) and torch.equal(b["mask"], a["mask"].flip(-1))
        assert torch.allclose(b["label"], camera.mirror_label(a["label"]))
        assert torch.equal(flipped[i]["image"], a["image"])
        yaw_a, _ = camera.yaw_pitch(a["label"])
        yaw_b, _ = camera.yaw_pitch(b["label"])
        assert torch.allclose(yaw_b, -yaw_a, atol=1e-6)
        assert b["identity"] == a["identity"]
    assert torch.equal(flipped.labels[n:], camera.mirror_label(plain.labels))


def test_index_list_filters_and_repeats(tiny, tmp_path):
    ref = ImageDataset(tiny)
    lst = tmp_path / "index.json"
    lst.write_text(json.dumps([3, 3, 0, 15]))
    ds = ImageDataset(tiny, index_list=lst)
    assert len(ds) == 4 and ds.raw_indices.tolist() == [3, 3, 0, 15]
    assert torch.equal(ds[0]["image"], ref[3]["image"]) and torch.equal(ds[1]["image"], ref[3]["image"])
    assert torch.equal(ds[2]["label"], ref[2 - 2]["label"]) and torch.equal(ds[3]["label"], ref[15]["label"])
    assert torch.equal(ds.labels, ref.labels[[3, 3, 0, 15]])
    both = ImageDataset(tiny, index_list=[3, 0], xflip=True)  # a plain sequence works too
    assert len(both) == 4 and torch.equal(both[3]["image"], ref[0]["image"].flip(-1))


def test_composite_and_sample_backgrounds():
    g = torch.Generator().manual_seed(0)
    r = sample_backgrounds("random", 5, g)
    assert r.shape == (5, 3) and (r >= 0).all() and (r <= 1).all() and r.std() > 0.1
    assert torch.equal(r, sample_backgrounds("random", 5, torch.Generator().manual_seed(0)))
    assert torch.equal(sample_backgrounds("white", 2), torch.ones(2, 3))
    assert torch.equal(sample_backgrounds("black", 2), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="unknown background scheme"):
        sample_backgrounds("plaid", 2)
    image = torch.rand(2, 3, 4, 4)
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, 1:3, 1:3] = 1
    mask[:, :, 0, 0] = 0.25
    out = composite(image, mask, torch.tensor([[1.0, 0.0, 0.5], [0.2, 0.2, 0.2]]))
    assert torch.equal(out[:, :, 1:3, 1:3], image[:, :, 1:3, 1:3])
    assert torch.equal(out[0, :, 3, 3], torch.tensor([1.0, 0.0, 0.5]))
    assert torch.allclose(out[1, :, 0, 0], 0.25 * image[1, :, 0, 0] + 0.75 * 0.2)


def test_background_schemes(tiny):
    off = ImageDataset(tiny)
    item = off[2]
    bg, fg = item["mask"][0] == 0, item["mask"][0] == 1
    assert bg.sum() > 100 and fg.sum() > 100
    white, black = ImageDataset(tiny, background="white")[2], ImageDataset(tiny, background="black")[2]
    assert (white["image"][:, bg] == 1.0).all() and (black["image"][:, bg] == -1.0).all()
    assert torch.equal(white["image"][:, fg], item["image"][:, fg]) and torch.equal(black["image"][:, fg], item["image"][:, fg])

    rnd = ImageDataset(tiny, background="random", seed=7)
    a = rnd[2]["image"][:, bg]
    assert (a - a[:, :1]).abs().max() < 1e-6  # one uniform colour per item
    assert torch.equal(rnd[2]["image"], ImageDataset(tiny, background="random", seed=7)[2]["image"])  # deterministic
    assert not torch.equal(rnd[2]["image"][:, bg], rnd[3]["image"][:, bg])  # per item
    rnd.set_epoch(1)
    assert not torch.equal(rnd[2]["image"][:, bg], a)  # per epoch
    rnd.set_epoch(0)
    assert torch.equal(rnd[2]["image"][:, bg], a)
    assert not torch.equal(ImageDataset(tiny, background="random", seed=8)[2]["image"][:, bg], a)  # per seed
    colours = torch.stack([rnd.background_color(i) for i in range(64)])
    assert colours.min() >= 0 and colours.max() <= 1 and colours.std(0).min() > 0.15
    with pytest.raises(ValueError, match="background"):
        ImageDataset(tiny, background="green")


def test_soft_edges_leave_no_white_fringe_on_other_backgrounds(tiny):
    """The synthetic heads are stored on white; pasting them on black matches the exact render."""
    black, white, off = (ImageDataset(tiny, background=b) for b in ("black", "white", "off"))
    for i in (1, 6):
        rgb, mask = render_identity(3, int(black.identities[i]), black.labels[i][None], 32)
        exact = rgb[0] * mask[0]  # on black, in [0, 1]
        edge = (mask[0, 0] > 0) & (mask[0, 0] < 1)
        assert edge.sum() > 10
        got = (black[i]["image"] + 1) / 2
        assert (got - exact).abs().max() < 0.03  # uint8 rounding, amplified a little where the mask is thin
        naive = ((off[i]["image"] + 1) / 2) * mask[0]  # pasting the stored (on-white) image as is
        assert (naive - exact)[:, edge].abs().max() > 0.1  # ...would leave a light fringe
        assert (white[i]["image"] - off[i]["image"]).abs().max() < 2.5 / 255 * 2  # white round-trips


# ------------------------------------------------------------------------ validation
def edit_json(root: Path, fn) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    fn(meta)
    (root / "dataset.json").write_text(json.dumps(meta))


def expect_error(root, fragment: str, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        ImageDataset(root, **kwargs)
    msg = str(info.value)
    assert fragment in msg, msg
    return msg


def test_missing_dataset_json(broken):
    (broken / "dataset.json").unlink()
    expect_error(broken, str(broken / "dataset.json"))
    expect_error(broken / "nowhere", "dataset not found")


def test_image_without_label(broken):
    edit_json(broken, lambda m: m["labels"].pop(4))
    msg = expect_error(broken, str(broken / "32" / "00004.png"))
    assert "without a label" in msg


def test_label_without_image(broken):
    (broken / "32" / "00006.png").unlink()
    msg = expect_error(broken, "32/00006.png")
    assert "without an image" in msg


@pytest.mark.parametrize("bad, fragment", [
    (lambda v: v[:24], "must be 25 numbers"),
    (lambda v: v + [1.0], "must be 25 numbers"),
    (lambda v: [float("nan")] + v[1:], "non-finite"),
    (lambda v: ["x"] * 25, "25 numbers"),
])
def test_bad_label(broken, bad, fragment):
    def f(meta):
        meta["labels"][2][1] = bad(meta["labels"][2][1])
    edit_json(broken, f)
    msg = expect_error(broken, "32/00002.png")
    assert fragment in msg and "dataset.json" in msg


def test_wrong_resolution(tiny):
    msg = expect_error(tiny, "resolution=64", resolution=64)
    assert str(tiny / "32") in msg


def test_mixed_sizes_and_not_square(broken):
    Image.new("RGB", (16, 16), "white").save(broken / "32" / "00009.png")
    assert "mixed sizes" in expect_error(broken, str(broken / "32" / "00009.png"))
    Image.new("RGB", (32, 24), "white").save(broken / "32" / "00009.png")
    assert "not square" in expect_error(broken, str(broken / "32" / "00009.png"))


def test_unreadable_image(broken):
    (broken / "32" / "00011.png").write_bytes(b"this is not a png")
    assert "unreadable" in expect_error(broken, str(broken / "32" / "00011.png"))


def test_truncated_image_is_caught_when_decoding(broken):
    path = broken / "32" / "00012.png"
    path.write_bytes(path.read_bytes()[:120])  # header intact, pixel data cut
    assert "unreadable" in expect_error(broken, str(path))


def test_mask_size_and_missing_mask(broken):
    # A mask at another (square) resolution is resized to its image, as the authors' loader does.
    Image.new("L", (16, 16), 255).save(broken / "mask" / "00001.png")
    ds = ImageDataset(broken)
    assert ds[1]["mask"].shape == (1, 32, 32) and (ds[1]["mask"] == 1).all()
    msg = expect_error(broken, str(broken / "mask" / "00001.png"), mask_resize=False)  # strict on request
    assert "16x16" in msg and "32x32" in msg
    Image.new("L", (32, 16), 255).save(broken / "mask" / "00001.png")
    assert "32x16" in expect_error(broken, str(broken / "mask" / "00001.png"))  # not square: no guessing
    (broken / "mask" / "00001.png").unlink()
    assert "no mask" in expect_error(broken, str(broken / "32" / "00001.png"))


def test_ffhqc_masks_at_another_resolution_load_resized_bilinear(tiny, tmp_path):
    """FFHQC keeps one mask/ folder beside the resolution folders: masks at 64x64 for 32x32 images load,
    resized bilinear to the image, whether the root or the resolution folder is given, folder or zip."""
    root = Path(shutil.copytree(tiny, tmp_path / "FFHQC"))
    big = {}
    for f in sorted((root / "mask").glob("*.png")):
        m = Image.open(f).resize((64, 64), Image.BICUBIC)
        m.save(f)
        big[f.name] = m
    ref = ImageDataset(tiny)
    for ds in (ImageDataset(root / "32"), ImageDataset(root), ImageDataset(make_zip(root, tmp_path / "FFHQC.zip"))):
        assert ds.has_masks and ds.resolution == 32
        for i in (0, 7):
            name = Path(ds.names[i]).name
            expected = np.asarray(big[name].resize((32, 32), Image.BILINEAR), dtype=np.float32) / 255
            assert torch.equal(ds[i]["mask"][0], torch.from_numpy(expected))
            assert (ds[i]["mask"] - ref[i]["mask"]).abs().mean() < 0.02  # the same silhouette
            assert torch.equal(ds[i]["image"], ref[i]["image"])


def reference_index_list_files(image_names: list[str], index_list: list[int]) -> list[str]:
    """What the authors' ImageFolderDataset (fraunhoferhhi/cgs-gan, training/dataset.py) makes of an
    index list, restated: the numbers of the images present, the list filtered to them (order and
    repeats kept), then f"{i:05d}.<ext>" file names."""
    available = {int(re.findall(r"\d+", Path(f).name)[0]) for f in image_names}
    ext = image_names[0].split(".")[-1]
    return [f"{i:05d}.{ext}" for i in index_list if i in available]


def test_index_list_entries_are_file_numbers_as_in_the_reference(broken, tmp_path, capsys):
    # Remove image 00005 (and its label and mask): from there on, positions and file numbers differ.
    (broken / "32" / "00005.png").unlink()
    (broken / "mask" / "00005.png").unlink()
    edit_json(broken, lambda m: m.update(labels=[e for e in m["labels"] if e[0] != "32/00005.png"]))
    entries = [6, 5, 6, 0, 15, 99, 14, -1]  # 5, 99 and -1 name no file
    lst = tmp_path / "smile_pose.json"
    lst.write_text(json.dumps(entries))
    capsys.readouterr()
    ds = ImageDataset(broken, index_list=lst)
    expected = reference_index_list_files(sorted(p.name for p in (broken / "32").glob("*.png")), entries)
    assert expected == ["00006.png", "00006.png", "00000.png", "00015.png", "00014.png"]
    assert [Path(ds.names[r]).name for r in ds.raw_indices.tolist()] == expected  # which files, in which order
    assert len(ds) == 5
    for i, name in enumerate(expected):
        pixels = torch.from_numpy(np.array(Image.open(broken / "32" / name))).permute(2, 0, 1).float() / 255 * 2 - 1
        assert torch.equal(ds[i]["image"], pixels)
    labels = dict(json.loads((broken / "dataset.json").read_text())["labels"])
    assert torch.equal(ds.labels, torch.tensor([labels[f"32/{n}"] for n in expected]))
    err = capsys.readouterr().err
    assert err.count("3 of 8 entries name no image") == 1, err  # how many were dropped, said once
    ImageDataset(broken, index_list=lst)  # a second dataset over the same list says nothing new
    assert "entries name no image" not in capsys.readouterr().err
    flipped = ImageDataset(broken, index_list=lst, xflip=True)  # mirrored copies appended, as in the reference
    assert len(flipped) == 10 and flipped.raw_indices.tolist() == ds.raw_indices.tolist() * 2


def test_index_list_errors(tiny, tmp_path):
    lst = tmp_path / "bad_index.json"
    lst.write_text(json.dumps([99, 100]))
    msg = expect_error(tiny, str(lst), index_list=lst)
    assert "none of its 2 entries" in msg and "0..15" in msg
    lst.write_text(json.dumps([0, "a"]))
    assert "entry 1 is not an integer" in expect_error(tiny, str(lst), index_list=lst)
    lst.write_text("[0, 1")
    assert "not valid JSON" in expect_error(tiny, str(lst), index_list=lst)
    lst.write_text("[]")
    assert "non-empty" in expect_error(tiny, str(lst), index_list=lst)


def test_index_list_needs_unambiguous_file_numbers(broken):
    shutil.copy(broken / "32" / "00003.png", broken / "32" / "img3.png")
    shutil.copy(broken / "mask" / "00003.png", broken / "mask" / "img3.png")
    edit_json(broken, lambda m: m["labels"].append(["32/img3.png", m["labels"][3][1]]))
    ImageDataset(broken)  # without an index list the numbers do not matter
    msg = expect_error(broken, str(broken / "32"), index_list=[3])
    assert "same file number (3)" in msg and "00003.png" in msg and "img3.png" in msg


def test_auto_index_list_takes_the_rebalancing_list_beside_the_dataset(broken, capsys):
    ds = ImageDataset(broken / "32", index_list="auto")  # none there: every image once, said once
    assert len(ds) == 16 and "no smile_pose_rebalancing.json" in capsys.readouterr().err
    (broken / "custom_dist").mkdir()
    (broken / "custom_dist" / REBALANCING_LIST).write_text(json.dumps([2, 2, 7]))
    assert find_rebalancing_list(broken / "32") == broken / "custom_dist" / REBALANCING_LIST
    (broken / REBALANCING_LIST).write_text(json.dumps([1, 1, 4]))
    ds = ImageDataset(broken / "32", index_list="auto")  # FFHQC/512 given: FFHQC/smile_pose_rebalancing.json
    assert ds.index_list_path == str(broken / REBALANCING_LIST) and ds.raw_indices.tolist() == [1, 1, 4]


def test_mirrored_labels_flip_yaw_as_the_reference(tiny):
    """The authors' flip_yaw negates cam2world entries [0,1], [0,2], [1,0], [2,0], [0,3]; intrinsics stay."""
    labels = ImageDataset(tiny).labels
    mirrored = ImageDataset(tiny, xflip=True).labels[len(labels):]
    expected = labels.clone()
    for r, c in ((0, 1), (0, 2), (1, 0), (2, 0), (0, 3)):
        expected[:, r * 4 + c] *= -1
    assert torch.allclose(mirrored, expected, atol=1e-7)
    assert not torch.allclose(mirrored, labels)


def test_a_dataset_without_masks_warns_once_that_reals_keep_their_background(broken, capsys):
    shutil.rmtree(broken / "mask")
    capsys.readouterr()
    ImageDataset(broken, background="random")
    ImageDataset(broken, background="black")  # the trainer builds a second dataset over the same files
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "no masks" in err and str(broken) in err, err
    ImageDataset(broken, background="white")  # stored on white (dataset.json says so): nothing to repaint
    ImageDataset(broken)  # background off: the images are used as stored
    assert "warning" not in capsys.readouterr().err


def test_check_dataset_decodes_what_the_header_check_misses(broken):
    path = broken / "32" / "00012.png"
    path.write_bytes(path.read_bytes()[:120])  # header intact, pixel data cut
    ImageDataset(broken, cache=False)  # headers only: loads
    with pytest.raises(DataError, match=re.escape(str(path))):
        check_dataset(broken)
    shutil.copy(broken / "32" / "00011.png", path)
    notes = check_dataset(broken, full_decode_max=4, sample=3)
    assert "random sample of 3 of the 16 images and masks" in notes[-1]
    assert "decoded all 16 images and masks" in check_dataset(broken)[-1]
    assert "decoded all 2 images" in check_dataset(broken, index_list=[1, 1, 2])[-1]


def test_load_labels_matches_dataset_order(tiny):
    table = load_labels(tiny)
    ds = ImageDataset(tiny)
    assert table.names == ds.names == sorted(table.names)
    assert torch.equal(table.labels, ds.labels) and torch.equal(table.identities, ds.identities)


def test_prefetch_decodes_in_the_background_and_changes_no_item(tiny, tmp_path):
    import threading

    zipped = make_zip(tiny, tmp_path / "tiny.zip")
    reference = ImageDataset(tiny, xflip=True)
    lazy = ImageDataset(zipped, cache=False, xflip=True)
    assert lazy.reads_on_demand and not reference.reads_on_demand
    threads: list[str] = []
    load = lazy._load
    lazy._load = lambda raw: (threads.append(threading.current_thread().name), load(raw))[1]
    lazy.prefetch([3, 20, 5])
    lazy._pending[lazy._raw_of(20)].result()  # wait for one of them
    assert any(t.startswith("cgsgan-decode") for t in threads)
    for i in (3, 20, 5, 9):  # 9 was not prefetched: decoded on the spot
        x, y = lazy[i], reference[i]
        assert all(torch.equal(x[k], y[k]) for k in ("image", "mask", "label"))
    assert threads[-1] == threading.current_thread().name and not lazy._pending
    lazy.prefetch([1, 2])
    lazy.prefetch([2])  # decodes no longer asked for are dropped
    assert set(lazy._pending) == {lazy._raw_of(2)}
    lazy.close()


def test_headers_checked_by_the_launcher_are_not_read_again_and_sizes_still_are(broken, monkeypatch):
    """A worker given data_checked (the launcher ran check_dataset) opens no image header at start: a
    512 px FFHQC is 140k files per worker. A decoded image of another size is still a DataError."""
    import cgsgan.data.dataset as dataset

    opened = []
    real = dataset._image_size
    monkeypatch.setattr(dataset, "_image_size", lambda store, name: opened.append(name) or real(store, name))
    ImageDataset(broken, resolution=32, cache=False)
    assert len(opened) == 2 * 16  # unchecked: every image header and every mask header
    opened.clear()
    trusted = ImageDataset(broken, resolution=32, cache=False, headers_checked=True)
    assert opened == [] and trusted[0]["image"].shape == (3, 32, 32)
    Image.new("RGB", (40, 40)).save(broken / trusted._files[0])  # the file changed after the launcher's check
    with pytest.raises(DataError, match="decoded size"):
        ImageDataset(broken, resolution=32, headers_checked=True)


def test_a_trainer_told_the_data_was_checked_reads_no_header(synthetic_dataset, tmp_path, monkeypatch):
    """The worker builds its Trainer with data_checked (the launcher's check_dataset ran): no header
    is opened again; without it, every one is."""
    import cgsgan.data.dataset as dataset
    from cgsgan.training.trainer import Trainer
    from tests.unit.small import small_config

    opened = []
    real = dataset._image_size
    monkeypatch.setattr(dataset, "_image_size", lambda store, name: opened.append(name) or real(store, name))
    cfg = small_config(synthetic_dataset)
    cfg.train.snapshot_metrics = []
    Trainer(cfg, tmp_path / "checked", data_checked=True)
    assert opened == []
    Trainer(cfg, tmp_path / "unchecked")
    assert len(opened) >= 64 * 4
