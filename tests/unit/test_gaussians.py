import struct

import torch

from cgsgan.gaussians import PLY_PROPERTIES, Gaussians, covariance, quat_to_rotmat


def random_gaussians(b=2, n=50, dtype=torch.float32, seed=0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.rand(b, n, 3, generator=g, dtype=dtype) - 0.5,
        log_scales=torch.randn(b, n, 3, generator=g, dtype=dtype) - 3,
        quats=torch.randn(b, n, 4, generator=g, dtype=dtype),
        opacity_logits=torch.randn(b, n, generator=g, dtype=dtype),
        sh0=torch.randn(b, n, 3, generator=g, dtype=dtype),
    )


def test_ply_round_trip(tmp_path):
    g = random_gaussians()
    path = tmp_path / "head.ply"
    g.save_ply(path, index=1)
    back = Gaussians.load_ply(path)
    for name, t in g[1].tensors().items():
        torch.testing.assert_close(getattr(back, name), t, msg=name)


def test_ply_header_properties_exact(tmp_path):
    g = random_gaussians(b=1, n=3)
    path = tmp_path / "h.ply"
    g.save_ply(path)
    raw = path.read_bytes()
    header = raw[: raw.index(b"end_header\n")].decode().splitlines()
    props = [line.split()[2] for line in header if line.startswith("property")]
    assert props == [
        "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
        "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
    ]  # fmt: skip
    assert list(PLY_PROPERTIES) == props
    assert "element vertex 3" in header and "format binary_little_endian 1.0" in header
    # Stored values: opacity as logit, scale as log, colour as SH DC (first vertex).
    body = raw[raw.index(b"end_header\n") + len(b"end_header\n") :]
    first = struct.unpack("<17f", body[: 17 * 4])
    assert abs(first[9] - g.opacity_logits[0, 0].item()) < 1e-6
    assert abs(first[10] - g.log_scales[0, 0, 0].item()) < 1e-6
    assert abs(first[6] - g.sh0[0, 0, 0].item()) < 1e-6


def test_activations_and_covariance():
    g = random_gaussians(dtype=torch.float64)
    assert (g.opacities > 0).all() and (g.opacities < 1).all()
    rot = quat_to_rotmat(g.quats)
    torch.testing.assert_close(rot @ rot.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(rot))
    cov = covariance(g.log_scales, g.quats)
    eig = torch.linalg.eigvalsh(cov)
    torch.testing.assert_close(eig.sort(-1).values, (2 * g.log_scales).exp().sort(-1).values)


def test_cat_levels_and_shape_validation():
    a, b = random_gaussians(n=5), random_gaussians(n=7, seed=1)
    c = Gaussians.cat([a, b])
    assert c.num_gaussians == 12
    torch.testing.assert_close(c.means[:, 5:], b.means)
    import pytest

    with pytest.raises(ValueError, match="sh0"):
        Gaussians(a.means, a.log_scales, a.quats, a.opacity_logits, a.sh0[:, :, :2])
