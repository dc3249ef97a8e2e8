"""The FID Inception-v3 architecture with random weights: shapes, key names, loading and errors.
(The real weights are never downloaded; these tests need none.)"""

from __future__ import annotations

import pytest
import torch

from cgsgan.metrics.feature_factory import load_features
from cgsgan.metrics.features import FeatureExtractor, metric_name
from cgsgan.metrics.inception import (
    FIDInceptionV3,
    InceptionFeatures,
    expected_keys,
    load_inception,
    load_state,
)


@pytest.fixture(scope="module")
def net() -> FIDInceptionV3:
    torch.manual_seed(0)
    return FIDInceptionV3().eval()


def test_architecture_size_and_pytorch_fid_key_names(net):
    # torchvision's Inception-v3 without aux logits has 23,834,568 parameters with 1000 classes;
    # the FID graph has 1008 classes (+8 * 2049).
    assert sum(p.numel() for p in net.parameters()) == 23_834_568 + 8 * 2049
    keys = expected_keys(net)
    for k in ["Conv2d_1a_3x3.conv.weight", "Conv2d_1a_3x3.bn.running_var", "Mixed_5b.branch5x5_2.conv.weight",
              "Mixed_6e.branch7x7dbl_5.bn.bias", "Mixed_7a.branch7x7x3_4.conv.weight",
              "Mixed_7c.branch3x3dbl_3b.bn.running_mean", "fc.weight", "fc.bias"]:
        assert k in keys, k
    assert not any("AuxLogits" in k or "num_batches_tracked" in k for k in keys)
    assert net.state_dict()["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 1, 7)
    assert net.state_dict()["fc.weight"].shape == (1008, 2048)


def test_features_are_2048_wide_for_any_input_size(net):
    feats = InceptionFeatures(net, batch_size=2)
    assert isinstance(feats, FeatureExtractor)
    assert metric_name("fid", feats) == "fid"  # the one extractor whose numbers keep the bare name
    out = feats(torch.rand(3, 3, 40, 40) * 2 - 1)  # resized to 299 inside, in 2 batches
    assert out.shape == (3, 2048) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and (out >= 0).all()  # average of ReLU outputs


def test_fid_specific_pooling_differs_from_plain_inception(net):
    # Mixed_7c pools with max (FIDInceptionE_2), Mixed_7b with a TF-style average: replacing
    # 7c's max pool by an average changes the output.
    x = torch.randn(1, 2048, 8, 8)
    with torch.no_grad():
        a = net.Mixed_7c(x)
        net.Mixed_7c.max_pool = False
        b = net.Mixed_7c(x)
        net.Mixed_7c.max_pool = True
    assert not torch.allclose(a, b)


def test_state_dict_round_trip_through_a_file(net, tmp_path):
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "pt_inception-2015-12-05-test.pth"
    torch.save(state, path)
    feats = load_inception(path)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    torch.testing.assert_close(feats(x), InceptionFeatures(net)(x))
    # the one factory (train.feature_extractor, --features) tells Inception weights by their content
    via_setting = load_features(str(path))
    assert isinstance(via_setting, InceptionFeatures)
    torch.testing.assert_close(via_setting(x), feats(x))


def test_wrong_keys_are_a_clear_error(net):
    state = dict(net.state_dict())
    state["AuxLogits.fc.weight"] = torch.zeros(1008, 768)
    with pytest.raises(ValueError, match="AuxLogits.*torchvision"):
        load_state(FIDInceptionV3(), state)
    del state["AuxLogits.fc.weight"]
    state.pop("Mixed_5b.branch1x1.conv.weight")
    with pytest.raises(ValueError, match="missing keys.*Mixed_5b.branch1x1.conv.weight.*pt_inception"):
        load_state(FIDInceptionV3(), state)
    state["Mixed_5b.branch1x1.conv.weight"] = torch.zeros(64, 192, 3, 3)
    with pytest.raises(ValueError, match="wrong shape"):
        load_state(FIDInceptionV3(), state)


def test_missing_or_unreadable_file_says_what_to_provide(tmp_path):
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05.*pytorch-fid"):
        load_inception(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot be read.*pt_inception"):
        load_inception(bad)
