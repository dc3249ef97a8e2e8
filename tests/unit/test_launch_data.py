"""Bad data is found before Ray starts: launch.py checks the dataset (labels,
index list, every image header, the pixels) and ends with exit 2 and one line naming the file; the
FFHQC config takes the authors' rebalancing list when it lies beside the dataset."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from orchestration.config import register, resolve_index_list, run_name, validate_launch
from orchestration.cluster import check_data

ROOT = Path(__file__).resolve().parents[2]
register()


def load(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "orchestration" / "conf"), version_base="1.3"):
        return OmegaConf.to_object(compose("config", overrides=list(overrides)))


@pytest.fixture(scope="module")
def heads(tmp_path_factory) -> Path:
    """16 synthetic heads at 64x64 (the tiny model's resolution)."""
    from cgsgan.data.synthetic import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("heads") / "heads", identities=4, views=4, resolution=64, seed=5)


def edit_labels(root: Path, fn) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    fn(meta["labels"])
    (root / "dataset.json").write_text(json.dumps(meta))


def truncate(root: Path) -> str:
    path = root / "64" / "00009.png"
    path.write_bytes(path.read_bytes()[:150])  # the header survives: only decoding finds it
    return str(path)


def short_label(root: Path) -> str:
    edit_labels(root, lambda labels: labels[3].__setitem__(1, labels[3][1][:24]))
    return str(root / "dataset.json")


def nan_label(root: Path) -> str:
    edit_labels(root, lambda labels: labels[5][1].__setitem__(7, float("nan")))
    return str(root / "dataset.json")


def mixed_sizes(root: Path) -> str:
    Image.new("RGB", (32, 32), "white").save(root / "64" / "00011.png")
    return str(root / "64" / "00011.png")


def index_list_out_of_range(root: Path) -> str:
    (root / "list.json").write_text(json.dumps([16, 99, 1000]))  # the images are numbered 0..15
    return str(root / "list.json")


def index_list_not_numbers(root: Path) -> str:
    (root / "list.json").write_text(json.dumps([1, 2, "3"]))
    return str(root / "list.json")


BREAKS = [truncate, short_label, nan_label, mixed_sizes, index_list_out_of_range, index_list_not_numbers]


@pytest.mark.parametrize("breaker", BREAKS, ids=[b.__name__ for b in BREAKS])
def test_bad_data_stops_the_launch_before_ray_with_one_line_naming_the_file(heads, tmp_path, breaker):
    root = Path(shutil.copytree(heads, tmp_path / "data"))
    culprit = breaker(root)
    args = [sys.executable, "orchestration/launch.py", "data=custom", f"data.path={root}", f"output_dir={tmp_path / 'out'}"]
    if breaker.__name__.startswith("index_list"):
        args.append(f"data.index_list={root / 'list.json'}")
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
    assert len(errors) == 1 and culprit in errors[0], out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert "Started a local Ray instance" not in out.stdout + out.stderr
    assert len((out.stdout + out.stderr).splitlines()) <= 3, out.stdout + out.stderr


def test_check_data_summarises_and_notes_dropped_index_list_entries(heads, tmp_path, capsys):
    lst = tmp_path / "list.json"
    lst.write_text(json.dumps([3, 3, 99, 4]))
    cfg = load("data=custom", f"data.path={heads}", f"data.index_list={lst}")
    notices = check_data(cfg)
    assert capsys.readouterr().out.startswith("data: ")
    assert len(notices) == 1 and "1 of 4 entries name no image" in notices[0]
    assert check_data(load()) == []  # the synthetic heads: nothing to check here


def test_ffhqc_defaults_to_the_rebalancing_list_beside_the_dataset(heads, tmp_path):
    root = Path(shutil.copytree(heads, tmp_path / "FFHQC"))
    without = resolve_index_list(validate_launch(load("data=ffhqc", f"data.path={root / '64'}")))
    assert without.data.index_list == "" and without.data.xflip
    (root / "smile_pose_rebalancing.json").write_text(json.dumps([1, 1, 2]))
    cfg = load("data=ffhqc", f"data.path={root / '64'}")
    assert cfg.data.index_list == "auto"
    resolve_index_list(validate_launch(cfg))
    assert cfg.data.index_list == str(root / "smile_pose_rebalancing.json")
    assert run_name(cfg) != run_name(without)  # with and without the list are different runs


def test_a_dataset_without_masks_gets_one_warning_before_ray_and_none_from_the_workers(heads, tmp_path, capsys):
    from cgsgan.data.dataset import ImageDataset, mark_shown

    root = Path(shutil.copytree(heads, tmp_path / "nomasks"))
    shutil.rmtree(root / "mask")
    notices = check_data(load("data=custom", f"data.path={root}", "loss.background=random"))
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "no masks" in err
    # A worker is handed the launcher's notices (worker_config "data_notices") and builds its two
    # datasets (training, white for the snapshot distance) without saying it again.
    mark_shown(notices)
    ImageDataset(root, resolution=64, background="random")
    ImageDataset(root, resolution=64, background="black")
    assert "warning" not in capsys.readouterr().err
