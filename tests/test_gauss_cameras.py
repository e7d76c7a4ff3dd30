"""Camera conventions pinned with worked examples (DreamGaussian: OpenGL world, y up, front +z)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from cg_lightning.cameras import Camera, orbit, orbit_camera, zero123_pose


def forward(c2w: torch.Tensor) -> torch.Tensor:
    """Viewing direction of an OpenGL camera (it looks along its -z axis)."""
    return -c2w[:3, 2]


def project_pixel(cam: Camera, p) -> torch.Tensor:
    """World point -> (u, v) pixel coordinates via the OpenCV w2c and K."""
    pc = cam.w2c @ torch.tensor([*p, 1.0])
    uvw = cam.K @ pc[:3]
    return uvw[:2] / uvw[2]


def test_front_camera_sits_on_plus_z_and_looks_at_origin():
    c2w = orbit_camera(0, 0, 2.0)
    torch.testing.assert_close(c2w[:3, 3], torch.tensor([0.0, 0.0, 2.0]))
    torch.testing.assert_close(forward(c2w), torch.tensor([0.0, 0.0, -1.0]))
    torch.testing.assert_close(c2w[:3, 0], torch.tensor([1.0, 0.0, 0.0]))  # right = +x
    torch.testing.assert_close(c2w[:3, 1], torch.tensor([0.0, 1.0, 0.0]))  # up = +y


def test_azimuth_90_looks_from_plus_x():
    c2w = orbit_camera(0, 90, 2.0)
    torch.testing.assert_close(c2w[:3, 3], torch.tensor([2.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(forward(c2w), torch.tensor([-1.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    # camera right is world -z: the object's front (+z) shows on the left half of the image
    cam = orbit(0, 90, width=64, height=64)
    assert project_pixel(cam, (0.0, 0.0, 0.3))[0] < 32


def test_negative_elevation_is_above_and_minus_90_is_top():
    assert orbit_camera(-30, 0)[1, 3] == pytest.approx(1.0, abs=1e-6)  # y = -r sin(-30) = +1
    assert orbit_camera(30, 0)[1, 3] == pytest.approx(-1.0, abs=1e-6)
    top = orbit_camera(-90, 0, 2.0)
    torch.testing.assert_close(top[:3, 3], torch.tensor([0.0, 2.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(forward(top), torch.tensor([0.0, -1.0, 0.0]), atol=1e-6, rtol=0)
    assert torch.isfinite(top).all()
    # seen from the top with azimuth 0, the front of the object (+z) is at the bottom of the image
    cam = orbit(-90, 0, width=64, height=64)
    assert project_pixel(cam, (0.0, 0.0, 0.3))[1] > 32


@pytest.mark.parametrize("elev,azim", [(-89.0, 13.0), (0.0, -180.0), (45.0, 200.0), (-10.0, 75.0)])
def test_orbit_camera_is_a_proper_look_at(elev, azim):
    target = (0.1, -0.2, 0.3)
    c2w = orbit_camera(elev, azim, 2.5, target=target).double()
    rot = c2w[:3, :3]
    torch.testing.assert_close(rot.T @ rot, torch.eye(3, dtype=torch.float64), atol=1e-6, rtol=0)
    assert torch.det(rot).item() == pytest.approx(1.0, abs=1e-6)
    to_target = torch.tensor(target, dtype=torch.float64) - c2w[:3, 3]
    assert to_target.norm().item() == pytest.approx(2.5, abs=1e-5)
    torch.testing.assert_close(forward(c2w), to_target / to_target.norm(), atol=1e-6, rtol=0)
    e, a = math.radians(elev), math.radians(azim)
    expect = [2.5 * math.cos(e) * math.sin(a), -2.5 * math.sin(e), 2.5 * math.cos(e) * math.cos(a)]
    torch.testing.assert_close(
        c2w[:3, 3] - torch.tensor(target, dtype=torch.float64),
        torch.tensor(expect, dtype=torch.float64),
        atol=1e-5,
        rtol=0,
    )


def test_intrinsics_and_pixel_convention():
    cam = orbit(0, 0, fovy_deg=49.1, width=96, height=64)
    assert cam.fovy == pytest.approx(math.radians(49.1))
    assert cam.tanfovx == pytest.approx(math.tan(math.radians(49.1) / 2) * 96 / 64)
    assert cam.fovx == pytest.approx(2 * math.atan(cam.tanfovx))
    assert cam.fx == pytest.approx(48 / cam.tanfovx) and cam.fy == pytest.approx(32 / cam.tanfovy)
    assert (cam.cx, cam.cy) == (48.0, 32.0)
    torch.testing.assert_close(project_pixel(cam, (0.0, 0.0, 0.0)), torch.tensor([48.0, 32.0]))
    right_up = project_pixel(cam, (0.2, 0.2, 0.0))
    assert right_up[0] > 48 and right_up[1] < 32  # +x -> right, +y -> up (row 0 is the top)
    # a point on the top edge of the frustum at depth 2 lands exactly on v = 0
    edge = project_pixel(cam, (0.0, 2.0 * cam.tanfovy, 0.0))
    assert edge[1].item() == pytest.approx(0.0, abs=1e-4)


def test_opencv_w2c_is_gl_flip_of_inverse_c2w():
    cam = orbit(-20, 40)
    pc = cam.w2c @ torch.tensor([0.0, 0.0, 0.0, 1.0])
    assert pc[2].item() == pytest.approx(2.0, abs=1e-5)  # OpenCV: the target is in front at +z
    gl = cam.w2c_gl @ torch.tensor([0.0, 0.0, 0.0, 1.0])
    assert gl[2].item() == pytest.approx(-2.0, abs=1e-5)  # OpenGL: in front means -z
    torch.testing.assert_close(
        cam.w2c @ cam.c2w, torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0])), atol=1e-6, rtol=0
    )


def test_gl_projection_flips_rows_like_dreamgaussian():
    cam = orbit(-15, 30, width=80, height=60)
    for p in [(0.1, 0.3, -0.2), (-0.3, -0.1, 0.25)]:
        clip = cam.mvp_gl @ torch.tensor([*p, 1.0])
        ndc = clip[:3] / clip[3]
        uv = project_pixel(cam, p)
        # NDC -> pixel with row 0 at NDC y = -1 (DG's -1/tan row)
        torch.testing.assert_close(torch.stack([(ndc[0] + 1) * 40, (ndc[1] + 1) * 30]), uv, atol=1e-3, rtol=0)
        assert -1 < ndc[2] < 1
    assert cam.proj_gl[1, 1] < 0 and cam.proj_gl[3, 2] == -1


def test_3dgs_matrices_match_intrinsics():
    cam = orbit(10, -60, width=70, height=50)
    p = torch.tensor([0.2, -0.1, 0.15, 1.0])
    view = p @ cam.world_view_transform
    torch.testing.assert_close(view, cam.w2c @ p)
    clip = p @ cam.full_proj_transform
    ndc = clip[:2] / clip[3]
    pix_3dgs = ((ndc + 1) * torch.tensor([70.0, 50.0]) - 1) * 0.5  # 3DGS ndc2Pix: centres at integers
    torch.testing.assert_close(pix_3dgs + 0.5, project_pixel(cam, p[:3].tolist()), atol=1e-4, rtol=0)
    assert clip[3].item() == pytest.approx(view[2].item(), rel=1e-6)  # w = camera depth


def test_resized_and_to_keep_pose_and_vertical_fov():
    cam = orbit(-30, 45, width=256, height=256)
    small = cam.resized(128, 64)
    assert (small.width, small.height, small.fovy) == (128, 64, cam.fovy)
    torch.testing.assert_close(small.c2w, cam.c2w)
    assert small.tanfovx == pytest.approx(2 * cam.tanfovy)
    assert cam.to("cpu").device.type == "cpu"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cam.width = 3


def test_zero123_pose_vector():
    t = zero123_pose(torch.tensor([30.0, -10.0]), torch.tensor([90.0, 180.0]), torch.tensor([0.0, 0.5]))
    assert t.shape == (2, 4)
    torch.testing.assert_close(t[0], torch.tensor([math.pi / 6, 1.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(t[1], torch.tensor([-math.pi / 18, 0.0, -1.0, 0.5]), atol=1e-6, rtol=0)
    assert zero123_pose(torch.tensor([0.0, 5.0, 7.0]), torch.tensor(0.0), torch.tensor(0.0)).shape == (3, 4)
