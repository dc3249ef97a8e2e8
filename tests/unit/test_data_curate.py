"""Curation: yaw and class rebalancing by repetition, filter rules, the CLI writing index lists."""

from __future__ import annotations

import csv
import json
from collections import Counter

import pytest
import torch

from cgsgan import camera
from cgsgan.data import curate
from cgsgan.data.dataset import ImageDataset, load_labels


def bin_ratio(yaws, indices, bins: int = 9) -> float:
    edges = curate.yaw_bin_edges(yaws, bins)
    counts = Counter(curate.yaw_bins([yaws[i] for i in indices], edges))
    full = [counts.get(b, 0) for b in range(bins)]
    return max(full) / min(full)


def test_yaw_balance_flattens_a_skewed_histogram():
    g = torch.Generator().manual_seed(0)
    yaws = (torch.randn(600, generator=g) * 0.3).tolist()
    out = curate.curate(yaws, bins=7, max_repeat=4)
    before, after = bin_ratio(yaws, range(600), 7), bin_ratio(yaws, out, 7)
    assert after < before / 2, (before, after)
    reps = Counter(out)
    assert set(reps) == set(range(600))  # nothing dropped
    assert max(reps.values()) == 4 and min(reps.values()) == 1
    assert out == sorted(out)
    # The fullest bin is left alone.
    assert curate.curate(yaws, bins=7, max_repeat=1) == list(range(600))


def test_balance_factors_and_class_balance():
    keys = ["a"] * 8 + ["b"] * 2 + ["c"]
    assert curate.balance_factors([keys], max_repeat=4) == [1] * 8 + [4, 4] + [4]
    assert curate.balance_factors([keys], max_repeat=10) == [1] * 8 + [4, 4] + [8]
    # One yaw bin (all yaws equal): only the classes of the balanced column are evened out.
    out = curate.curate([0.0] * len(keys), [{"smile": k} for k in keys], balance="smile", bins=1, max_repeat=10)
    assert Counter(keys[i] for i in out) == {"a": 8, "b": 8, "c": 8}
    with pytest.raises(ValueError, match="max_repeat"):
        curate.balance_factors([keys], 0)


def test_filter_rules():
    rows = [
        {"file": "a.png", "occluded": "0", "age": "25", "name": "ann", "score": "0.2"},
        {"file": "b.png", "occluded": "1", "age": "40", "name": "bob", "score": "0.9"},
        {"file": "c.png", "occluded": "0", "age": "12", "name": "cid", "score": "0.4"},
        {"file": "d.png", "occluded": "0.0", "age": "33", "name": "bob", "score": "0.7"},
    ]
    assert curate.filter_indices(rows, ["occluded==0"]) == [0, 2, 3]  # "0.0" == 0 numerically
    assert curate.filter_indices(rows, ["occluded==0", "age>20"]) == [0, 3]
    assert curate.filter_indices(rows, ["name!=bob"]) == [0, 2]
    assert curate.filter_indices(rows, ["score<0.5"]) == [0, 2]
    assert curate.filter_indices(rows, [" name == bob "]) == [1, 3]
    with pytest.raises(ValueError, match="expected COLUMN==VALUE"):
        curate.parse_rule("occluded=0")
    with pytest.raises(ValueError, match="no column 'hat'"):
        curate.filter_indices(rows, ["hat==1"])
    with pytest.raises(ValueError, match="compare numbers"):
        curate.filter_indices(rows, ["name<3"])


def test_curate_combines_filter_class_and_yaw_balance():
    yaws = [0.0] * 6 + [0.5] * 2
    rows = [{"smile": s, "occluded": o} for s, o in
            [("1", "0"), ("0", "0"), ("0", "0"), ("0", "0"), ("0", "1"), ("0", "0"), ("1", "0"), ("0", "0")]]
    out = curate.curate(yaws, rows, ["occluded==0"], "smile", bins=2, max_repeat=3)
    assert 4 not in out and set(out) == {0, 1, 2, 3, 5, 6, 7}
    assert max(Counter(out).values()) <= 3
    smiles = Counter(rows[i]["smile"] for i in out)
    assert smiles["1"] / smiles["0"] > 2 / 5  # the rare class gained
    with pytest.raises(ValueError, match="leave no images"):
        curate.curate(yaws, rows, ["occluded==7"])


def write_attributes(path, names, occluded_every: int = 3) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "occluded", "smile"])
        for i, n in enumerate(names):
            # File names without the resolution folder: matched on the file name.
            w.writerow([n.split("/")[-1], int(i % occluded_every == 0), "yes" if i % 5 == 0 else "no"])


def test_cli_writes_an_index_list_the_dataset_loads(synthetic_dataset, tmp_path, capsys):
    out = tmp_path / "yaw.json"
    assert curate.main(["--data", str(synthetic_dataset), "--out", str(out), "--yaw-bins", "7"]) == 0
    printed = capsys.readouterr().out
    assert "yaw histogram before" in printed and "yaw histogram after" in printed
    indices = json.loads(out.read_text())
    yaws = camera.yaw_pitch(load_labels(synthetic_dataset).labels)[0].tolist()
    assert bin_ratio(yaws, indices, 7) < bin_ratio(yaws, range(len(yaws)), 7)
    ds = ImageDataset(synthetic_dataset, index_list=out)
    assert len(ds) == len(indices) > 256

    names = load_labels(synthetic_dataset).names
    table = tmp_path / "attrs.csv"
    write_attributes(table, names)
    smile_share_before = sum(1 for i in range(256) if i % 3 and i % 5 == 0) / sum(1 for i in range(256) if i % 3)

    def run(yaw_bins: str) -> list[int]:
        out2 = tmp_path / f"curated{yaw_bins}.json"
        rc = curate.main(["--data", str(synthetic_dataset), "--out", str(out2), "--attributes", str(table),
                          "--filter", "occluded==0", "--balance", "smile", "--max-repeat", "3", "--yaw-bins", yaw_bins])
        assert rc == 0
        printed = capsys.readouterr().out
        assert "smile before" in printed and "smile after" in printed
        picked = json.loads(out2.read_text())
        assert picked and all(i % 3 != 0 for i in picked)  # every occluded image filtered out
        assert max(Counter(picked).values()) <= 3
        assert len(ImageDataset(synthetic_dataset, index_list=out2)) == len(picked)
        return picked

    # Smiles alone (one yaw bin = no yaw balancing): the rare "yes" class is repeated 3x (capped).
    picked = run("1")
    share = sum(1 for i in picked if i % 5 == 0) / len(picked)
    assert share > 1.8 * smile_share_before, (share, smile_share_before)
    # Smiles and yaw together: both move towards flat (the cap makes it a compromise).
    picked = run("9")
    share = sum(1 for i in picked if i % 5 == 0) / len(picked)
    kept = [i for i in range(256) if i % 3]
    assert share > 1.2 * smile_share_before, (share, smile_share_before)
    assert bin_ratio(yaws, picked, 5) < bin_ratio(yaws, kept, 5)


def test_cli_errors(synthetic_dataset, tmp_path, capsys):
    out = tmp_path / "x.json"
    assert curate.main(["--data", str(synthetic_dataset), "--out", str(out), "--filter", "a==1"]) == 2
    assert "need --attributes" in capsys.readouterr().err
    table = tmp_path / "partial.csv"
    write_attributes(table, load_labels(synthetic_dataset).names[:10])
    assert curate.main(["--data", str(synthetic_dataset), "--out", str(out), "--attributes", str(table)]) == 2
    assert "no row for image" in capsys.readouterr().err
    assert curate.main(["--data", str(synthetic_dataset), "--out", str(out), "--attributes", str(table),
                        "--missing", "drop"]) == 0
    assert set(json.loads(out.read_text())) <= set(range(10))
    assert curate.main(["--data", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert not (tmp_path / "none").exists()


def test_cli_writes_image_file_numbers(tmp_path):
    """Index lists hold file numbers (the authors' format), not positions in the sorted names: with
    00001.png missing, the curated list names 00002.png..00015.png by 2..15."""
    import shutil

    from cgsgan.data.synthetic import generate_synthetic

    root = generate_synthetic(tmp_path / "heads", identities=4, views=4, resolution=32, seed=3)
    (root / "32" / "00001.png").unlink()
    (root / "mask" / "00001.png").unlink()
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = [e for e in meta["labels"] if e[0] != "32/00001.png"]
    (root / "dataset.json").write_text(json.dumps(meta))
    out = tmp_path / "list.json"
    assert curate.main(["--data", str(root), "--out", str(out), "--yaw-bins", "3"]) == 0
    entries = json.loads(out.read_text())
    assert set(entries) == {0, *range(2, 16)}  # every image kept at least once, by its number
    ds = ImageDataset(root, index_list=out)
    assert [int(ds.names[r][3:8]) for r in ds.raw_indices.tolist()] == entries
    shutil.rmtree(root)
