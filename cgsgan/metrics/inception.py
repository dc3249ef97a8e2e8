"""The Inception-v3 network of FID, in plain PyTorch, loaded from a local weights file.

This is the network of the TensorFlow FID reference (the 2015-12-05 Inception graph) as ported by
pytorch-fid, not torchvision's ImageNet Inception: its weights differ and so do four kinds of
block. Relative to the usual Inception-v3:
    - FIDInceptionA / FIDInceptionC / FIDInceptionE_1 (Mixed_5b-5d, Mixed_6b-6e, Mixed_7b): the
      3x3 average pool of the pooling branch ignores padded zeros (count_include_pad=False), as
      TensorFlow's does;
    - FIDInceptionE_2 (Mixed_7c): the pooling branch uses a 3x3 max pool instead;
    - the classifier has 1008 classes.
Features are the 2048-d global average pool ("pool3") after Mixed_7c. Inputs are resized to
299x299 bilinearly (align_corners=False) and fed in [-1, 1], which is what pytorch-fid does
after its x -> 2x - 1 on [0, 1] inputs.

Weights are never downloaded here. Provide `pt_inception-2015-12-05-6726825d.pth` (the
pytorch-fid release file, a plain state_dict) with `--inception PATH`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cgsgan.metrics.features import in_batches

FEATURE_DIM = 2048
NUM_CLASSES = 1008
INPUT_SIZE = 299
WEIGHTS_HINT = (
    "Provide the FID Inception weights as a local file: pt_inception-2015-12-05-6726825d.pth, the "
    "state_dict published with pytorch-fid (GitHub mseitzer/pytorch-fid, release 'fid_weights'; "
    "pip's pytorch-fid caches it under ~/.cache/torch/hub/checkpoints/ after its first run). "
    "Nothing is downloaded by this project."
)


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU; keys `conv.weight`, `bn.*`."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's SAME average pool divides by the number of real (unpadded) pixels.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 -> 224 + pool_features channels."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2 -> cin + 480 channels."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions -> 768 channels."""

    def __init__(self, cin: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            bd = layer(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction -> cin + 512 channels."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionE(nn.Module):
    """8x8 block with split 1x3/3x1 convolutions -> 2048 channels.

    max_pool=False is FIDInceptionE_1 (Mixed_7b: TF average pool), True is FIDInceptionE_2
    (Mixed_7c: the FID graph's max pool in the pooling branch).
    """

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool_tf(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """images [N, 3, 299, 299] in [-1, 1] -> pool3 features [N, 2048].

    Module names follow the pytorch-fid / torchvision state_dict (Conv2d_1a_3x3, Mixed_5b, ...,
    fc), so the published weights load as they are. `fc` (1008 classes) is kept only so the file
    loads strictly; FID does not use it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)  # -> 149
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)  # -> 147
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)  # -> 147, maxpool -> 73
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)  # -> 71, maxpool -> 35
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)  # 256
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)  # 288
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)  # 288
        self.Mixed_6a = InceptionB(288)  # 768 x 17 x 17
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)  # 1280 x 8 x 8
        self.Mixed_7b = FIDInceptionE(1280, max_pool=False)  # 2048
        self.Mixed_7c = FIDInceptionE(2048, max_pool=True)  # 2048
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))  # global average pool -> [N, 2048]


def expected_keys(model: nn.Module | None = None) -> set[str]:
    """State-dict keys the weights file must hold (BatchNorm's num_batches_tracked is optional)."""
    model = model or FIDInceptionV3()
    return {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}


def load_state(model: FIDInceptionV3, state: dict, source: str = "state_dict") -> FIDInceptionV3:
    """Load a pytorch-fid state_dict into `model`; a mismatch raises a ValueError naming the keys."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{source}: expected a plain state_dict of tensors (the pytorch-fid file). {WEIGHTS_HINT}")
    want, have = expected_keys(model), {k for k in state if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(want - have), sorted(have - want)
    if missing or unexpected:
        hint = ""
        if any(k.startswith("AuxLogits") for k in unexpected):
            hint = " (AuxLogits keys suggest torchvision's ImageNet Inception, which is not the FID network)"
        raise ValueError(
            f"{source}: not the FID Inception weights{hint}: {len(missing)} missing keys "
            f"{missing[:5]}{'...' if len(missing) > 5 else ''}, {len(unexpected)} unexpected keys "
            f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}. {WEIGHTS_HINT}"
        )
    own = model.state_dict()
    bad = [k for k in want if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(
            f"{source}: {len(bad)} tensors have the wrong shape, e.g. {k}: {tuple(state[k].shape)} instead of "
            f"{tuple(own[k].shape)}. {WEIGHTS_HINT}"
        )
    # strict=False only for num_batches_tracked (absent in some exports); every other key was checked.
    model.load_state_dict({k: state[k] for k in want}, strict=False)
    return model


class InceptionFeatures(nn.Module):
    """FeatureExtractor for FID/KID: images [N, 3, H, W] in [-1, 1] -> [N, 2048] (suffix "").

    quantize=True rounds images to 8 bits first, as the reference computes FID on saved PNGs.
    """

    suffix = ""
    dim = FEATURE_DIM

    def __init__(self, net: FIDInceptionV3, batch_size: int = 64, device: str | torch.device = "cpu",
                 quantize: bool = True) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False).to(device)
        self.batch_size, self.device, self.quantize = batch_size, torch.device(device), quantize

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return in_batches(self._features, images, self.batch_size)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, torch.float32)
        if self.quantize:
            x = ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return self.net(x).float().cpu()


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def load_inception(path: str | Path, device: str | torch.device = "cpu", batch_size: int = 64) -> InceptionFeatures:
    """The FID feature extractor from a local pytorch-fid weights file (never downloaded)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights not found: {path}. {WEIGHTS_HINT}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file, a pickle with code, not a torch file at all
        raise ValueError(f"{path}: cannot be read as a torch state_dict ({type(e).__name__}: {_first_line(e)}). {WEIGHTS_HINT}") from e
    return InceptionFeatures(load_state(FIDInceptionV3(), state, str(path)), batch_size=batch_size, device=device)
