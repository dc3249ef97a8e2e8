import math

import torch

from cgsgan import camera


def test_frontal_camera_position_and_lookat_projects_to_centre():
    label = camera.frontal_label(1, dtype=torch.float64)
    pos = camera.camera_position(label)[0]
    torch.testing.assert_close(pos, torch.tensor([0.0, 0.0, 2.7], dtype=torch.float64))
    uv = camera.project(torch.tensor([[camera.LOOKAT]], dtype=torch.float64), label, 64, 48)[0, 0]
    torch.testing.assert_close(uv, torch.tensor([32.0, 24.0], dtype=torch.float64))


def test_world_x_projects_right_and_y_up():
    label = camera.frontal_label(1, dtype=torch.float64)
    centre = torch.tensor(camera.LOOKAT, dtype=torch.float64)
    pts = torch.stack([centre, centre + torch.tensor([0.1, 0, 0.0]), centre + torch.tensor([0, 0.1, 0.0])])[None]
    uv = camera.project(pts, label, 64, 64)[0]
    assert uv[1, 0] > uv[0, 0] + 1 and abs(uv[1, 1] - uv[0, 1]) < 1e-9  # +x -> right
    assert uv[2, 1] < uv[0, 1] - 1 and abs(uv[2, 0] - uv[0, 0]) < 1e-9  # +y -> up (smaller row)


def test_positive_yaw_moves_camera_to_plus_x():
    label = camera.make_label(
        camera.pose_from_angles(torch.tensor([0.4]), torch.tensor([0.2])), camera.intrinsics(batch=1)
    )
    pos = camera.camera_position(label)[0]
    assert pos[0] > 0 and pos[1] > 0
    yaw, pitch = camera.yaw_pitch(label)
    assert math.isclose(yaw.item(), 0.4, abs_tol=1e-5) and math.isclose(pitch.item(), 0.2, abs_tol=1e-5)


def test_mirror_twice_is_identity_and_flips_yaw():
    labels = camera.sample_gaussian_poses(16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mirrored = camera.mirror_label(labels)
    torch.testing.assert_close(camera.mirror_label(mirrored), labels)
    yaw, pitch = camera.yaw_pitch(labels)
    yaw_m, pitch_m = camera.yaw_pitch(mirrored)
    torch.testing.assert_close(yaw_m, -yaw)
    torch.testing.assert_close(pitch_m, pitch)
    # The mirrored camera sees the mirrored world: a point and its x-mirror swap image columns.
    pts = torch.rand(1, 5, 3, dtype=torch.float64) * 0.4 - 0.2
    uv = camera.project(pts, labels[:1], 64, 64)
    uv_m = camera.project(pts * torch.tensor([-1.0, 1, 1], dtype=torch.float64), mirrored[:1], 64, 64)
    torch.testing.assert_close(uv_m[..., 0], 64 - uv[..., 0])
    torch.testing.assert_close(uv_m[..., 1], uv[..., 1])


def test_label_matrices_round_trip_and_view_matrix_inverts():
    labels = camera.sample_uniform_yaw(8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    c2w, intr = camera.split_label(labels)
    torch.testing.assert_close(camera.make_label(c2w, intr), labels)
    eye = camera.view_matrix(c2w) @ c2w
    torch.testing.assert_close(eye, torch.eye(4, dtype=torch.float64).expand(8, 4, 4))
    # rotation is orthonormal with det +1 (a proper camera frame)
    det = torch.linalg.det(c2w[:, :3, :3])
    torch.testing.assert_close(det, torch.ones(8, dtype=torch.float64))


def test_cameras_look_at_lookat_point():
    labels = camera.sample_gaussian_poses(32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    uv = camera.project(torch.tensor(camera.LOOKAT, dtype=torch.float64).expand(32, 1, 3), labels, 64, 64)
    torch.testing.assert_close(uv, torch.full_like(uv, 32.0))
    radius = camera.camera_position(labels).norm(dim=-1)
    torch.testing.assert_close(radius, torch.full_like(radius, camera.RADIUS))


def test_bad_label_is_rejected_with_location():
    import pytest

    with pytest.raises(ValueError, match="img7.png"):
        camera.validate_label([0.0] * 24, "img7.png")
    with pytest.raises(ValueError, match="non-finite"):
        camera.validate_label([float("nan")] * 25, "x")
