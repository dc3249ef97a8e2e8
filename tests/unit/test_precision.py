"""The bf16 autocast switch (train.autocast_bf16): CUDA only, off by default, weights untouched.
Its effect on a GPU (blocks in bf16, finite losses at 512) is asserted in tests/gpu/test_gsplat.py."""

import copy
import pickle
import warnings

import pytest
import torch

from cgsgan import config
from cgsgan.models import build_models
from cgsgan.training.trainer import Trainer, _autocast_blocks_bf16


def test_autocast_is_off_by_default_and_cuda_only(synthetic_dataset, tmp_path):
    assert config.TrainConfig().autocast_bf16 is False
    cfg = config.tiny()
    cfg.data.source, cfg.data.path = "folder", str(synthetic_dataset)
    cfg.train.autocast_bf16 = True
    with pytest.warns(UserWarning, match="CUDA only"):
        t = Trainer(cfg, tmp_path)
    assert all(b.autocast_dtype is None for b in t.G.blocks)  # CPU: left as it is


def test_autocast_wrapper_keeps_parameters_copies_and_outputs():
    torch.manual_seed(0)
    G, _ = build_models(config.tiny().model)
    plain = copy.deepcopy(G)
    keys = list(G.state_dict())
    _autocast_blocks_bf16(G)
    _autocast_blocks_bf16(G)  # idempotent
    assert all(b.autocast_dtype is torch.bfloat16 for b in G.blocks)
    assert list(G.state_dict()) == keys and list(G.parameters())[0] is next(G.parameters())
    twin = pickle.loads(pickle.dumps(copy.deepcopy(G)))  # copies keep the setting
    assert twin.blocks[0].autocast_dtype is torch.bfloat16 and twin.blocks[0].qkv.weight is not G.blocks[0].qkv.weight
    z = torch.randn(2, G.cfg.z_dim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available, disabling autocast" on CPU
        out, ref = G(z).gaussians.means, plain(z).gaussians.means
    torch.testing.assert_close(out, ref, rtol=0, atol=0)  # on CPU the autocast is a no-op: same arithmetic
    assert out.dtype == torch.float32
