"""Metrics on the synthetic heads: distances behave (held-out reals close, blurred reals farther,
monotonically), the synthetic extractor trains/saves/loads, evaluate_generator and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cgsgan import config
from cgsgan.config import to_dict
from cgsgan.data.dataset import ImageDataset
from cgsgan.evaluate import main as evaluate_main
from cgsgan.generator import Generator
from cgsgan.losses import blur
from cgsgan.metrics.consistency import PSNR_CAP
from cgsgan.metrics.evaluation import MetricContext, evaluate
from cgsgan.metrics.extractor import SynthFeatures, load_extractor
from cgsgan.metrics.extractor import main as extractor_main
from cgsgan.metrics.feature_factory import load_features
from cgsgan.metrics.features import FeatureExtractor
from cgsgan.metrics.frechet import fid_from_features
from cgsgan.metrics.ground_truth import SyntheticTruth
from cgsgan.metrics.kid import kid
from cgsgan.metrics.random_features import RandomFeatures
from cgsgan.metrics.sampling import as_generator, real_images
from cgsgan.training.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def dataset(synthetic_dataset):
    return ImageDataset(synthetic_dataset)


def tiny_perturbed(camera_conditioned: bool = False) -> Generator:
    torch.manual_seed(3)
    cfg = config.tiny()
    G = Generator(cfg.model.generator, cfg.model.resolution, camera_conditioned=camera_conditioned).eval()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return G


def distances_with_blur(dataset, extractor: FeatureExtractor, sigmas: list[float]) -> tuple[float, list[float], list[float]]:
    # Two disjoint halves of the real images (128 each): one is "real", the other "held-out real".
    n = len(dataset) // 2
    perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    a, b = real_images(dataset, perm[:n]), real_images(dataset, perm[n : 2 * n])
    fa = extractor(a)
    fds, kids = [], []
    for s in [0.0, *sigmas]:
        fb = extractor(blur(b, s))
        fds.append(fid_from_features(fa, fb))
        kids.append(kid(fa, fb, num_subsets=20, subset_size=min(n, 200)).mean)
    return fds[0], fds[1:], kids


def test_held_out_reals_are_closer_than_blurred_reals_and_blur_is_monotonic(dataset):
    sigmas = [1.5, 3.0, 6.0]
    held_out, blurred, kids = distances_with_blur(dataset, RandomFeatures(), sigmas)
    assert blurred[0] > 2 * held_out, (held_out, blurred)
    assert all(x < y for x, y in zip(blurred, blurred[1:])), blurred
    assert all(x < y for x, y in zip(kids, kids[1:])), kids  # kids[0] is the held-out one


@pytest.fixture(scope="module")
def extractor_file(synthetic_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("extractor") / "extractor.pt"
    assert extractor_main(["--data", str(synthetic_dataset), "--out", str(out), "--steps", "30", "--batch", "16"]) == 0
    return out


def test_extractor_trains_saves_and_loads_plain_data(extractor_file, dataset):
    ex = load_extractor(extractor_file)
    assert isinstance(ex, FeatureExtractor) and isinstance(ex, SynthFeatures)
    assert ex.suffix == "synth" and ex.dim == 128
    json.dumps(ex.meta)  # JSON-able meta
    assert ex.meta["train"]["steps"] == 30
    # weights_only load: the file holds tensors and plain values only
    payload = torch.load(extractor_file, weights_only=True)
    assert set(payload) == {"format", "meta", "state_dict"}
    x = real_images(dataset, range(4))
    f1, f2 = ex(x), load_extractor(extractor_file)(x)
    assert f1.shape == (4, 128) and torch.equal(f1, f2)
    # the one factory (train.feature_extractor, --features): a file is told apart by its content
    via_setting = load_features(str(extractor_file))
    assert isinstance(via_setting, SynthFeatures) and torch.equal(via_setting(x), f1)
    assert isinstance(load_features("random"), RandomFeatures)


def test_extractor_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="extractor file not found.*cgsgan.metrics.extractor"):
        load_extractor(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"something": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="not a synthetic-heads extractor"):
        load_extractor(other)
    assert extractor_main(["--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.pt")]) == 2


def context(dataset, **kw) -> MetricContext:
    return MetricContext(extractor=RandomFeatures(), reference=dataset, resolution=64, batch_size=8, backend="torch",
                         **kw)


def test_evaluate_every_metric_on_the_camera_free_generator(dataset, synthetic_dataset):
    G = tiny_perturbed()
    ctx = context(dataset, samples=16, num_real=64, heads=3, yaw_bins=3,
                  truth=SyntheticTruth.of_dataset(synthetic_dataset))
    res = evaluate(ctx.for_generator(as_generator(G)), ["fid", "kid", "fid3d", "sensitivity", "psnr_cond",
                                                        "depth_consistency", "yaw_bins"])
    assert res["fid_rand"] > 0 and math.isfinite(res["kid_rand"]) and res["kid_rand_std"] > 0
    assert res["fid3d_rand"] == res["fid_rand"]  # same samples by construction
    assert "fid_rand_floor" not in res  # no held-out reals, no floor
    assert res["sensitivity"] == 0.0 and res["psnr_cond"] == PSNR_CAP
    assert math.isfinite(res["depth_consistency"])
    bins = [k for k in res if k.startswith("yaw_fd_rand/")]
    assert 1 <= len(bins) <= 3 and all(math.isfinite(res[k]) for k in bins)
    assert len(ctx.reals) == 1  # real features kept for the next generator
    json.dumps(res)


def test_evaluate_g_conditioned_fid3d_differs(dataset):
    G = tiny_perturbed(camera_conditioned=True)
    ctx = context(dataset, samples=8, num_real=64, heads=2)
    res = evaluate(ctx.for_generator(as_generator(G)), "fid,fid3d,sensitivity,psnr_cond")
    assert res["fid3d_rand"] != res["fid_rand"]
    assert res["sensitivity"] > 0 and res["psnr_cond"] < PSNR_CAP


def test_evaluate_cli_writes_json_and_rejects_bad_inputs(synthetic_dataset, tmp_path, capsys):
    cfg = config.tiny()
    G = tiny_perturbed()
    ckpt = save_checkpoint({"config": to_dict(cfg), "G_ema": G.state_dict()}, tmp_path / "ckpt.pt")
    out = tmp_path / "metrics.json"
    rc = evaluate_main(["--checkpoint", str(ckpt), "--data", str(synthetic_dataset), "--metrics",
                        "fid,kid,fid_novel,sensitivity", "--floor", "--num", "8", "--num-real", "32", "--num-3d", "2",
                        "--batch", "8", "--backend", "torch", "--out", str(out)])
    assert rc == 0
    payload = json.loads(out.read_text())
    assert set(payload["metrics"]) >= {"fid_rand", "fid_rand_floor", "kid_rand", "kid_rand_std", "fid_rand_novel",
                                       "fid_rand_novel_floor", "sensitivity"}
    assert "fid_rand" in capsys.readouterr().out  # the printed table
    for argv, msg in [
        (["--checkpoint", str(tmp_path / "nope.pt"), "--data", str(synthetic_dataset)], "checkpoint not found"),
        (["--checkpoint", str(ckpt), "--data", str(tmp_path / "nodata")], "dataset not found"),
        (["--checkpoint", str(ckpt), "--data", str(synthetic_dataset), "--metrics", "fid,bogus"], "unknown metrics"),
        (["--checkpoint", str(ckpt), "--data", str(synthetic_dataset), "--inception", str(tmp_path / "w.pth")],
         "pt_inception"),
        (["--checkpoint", str(ckpt), "--data", str(synthetic_dataset), "--extractor", str(tmp_path / "e.pt")],
         "features file not found"),
    ]:
        assert evaluate_main(argv) == 2
        assert msg in capsys.readouterr().err


def test_evaluate_compares_with_the_reals_the_run_trained_on(synthetic_dataset, tmp_path):
    """As the authors' evaluation: the training set's index list and x-flips (6 reals from a
    3-entry list with xflip), unless --index-list says otherwise."""
    lst = tmp_path / "list.json"
    lst.write_text(json.dumps([5, 5, 9]))
    cfg = config.tiny()
    cfg.data.index_list, cfg.data.xflip = str(lst), True
    ckpt = save_checkpoint({"config": to_dict(cfg), "G_ema": tiny_perturbed().state_dict()}, tmp_path / "ckpt.pt")

    def num_real(*extra: str) -> int:
        out = tmp_path / "m.json"
        assert evaluate_main(["--checkpoint", str(ckpt), "--data", str(synthetic_dataset), "--metrics", "fid",
                              "--num", "4", "--num-real", "100000", "--batch", "8", "--backend", "torch",
                              "--out", str(out), *extra]) == 0
        return json.loads(out.read_text())["num_real"]

    assert num_real() == 6
    assert num_real("--index-list", "none") == 2 * 256
