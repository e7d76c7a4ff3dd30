"""Golden: cameras against DG ``cam_utils.orbit_camera`` / ``OrbitCamera`` and ``gs_renderer.MiniCam``.

Fixture: tests/golden/cameras.npz (216 poses x 8 intrinsics). The official matrices are float32 products of float32
inputs; ours invert the pose in float64 first. Tolerances are the float32 rounding of those products (a few ulp of
entries up to ~100): c2w exact, view matrices 3e-7, projections 1e-6 (the 2fn/(f-n) entry is ~0.02, the others
are O(1)).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cg_lightning.cameras import orbit, orbit_camera

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def fx():
    return dict(np.load(GOLDEN / "cameras.npz"))


def test_pose_and_view_matrices(fx):
    for p, (elev, azim, radius) in enumerate(fx["poses_elev_azim_radius"]):
        cam = orbit(float(elev), float(azim), float(radius))
        np.testing.assert_array_equal(orbit_camera(float(elev), float(azim), float(radius)).numpy(), fx["c2w"][p])
        np.testing.assert_array_equal(cam.c2w.numpy(), fx["c2w"][p])
        np.testing.assert_allclose(cam.world_view_transform.numpy(), fx["world_view_transform"][p], atol=3e-7,
                                   rtol=0)
        # DG's MiniCam.camera_center is -c2w[:3, 3] (a sign quirk used only for SH degree > 0)
        np.testing.assert_array_equal((-cam.position).numpy(), fx["camera_center"][p])


def test_intrinsics_and_projections(fx):
    assert float(fx["near"]) == 0.01 and float(fx["far"]) == 100.0
    poses = fx["poses_elev_azim_radius"]
    for k, (fovy_deg, w, h) in enumerate(fx["intrinsics_fovydeg_w_h"]):
        cam0 = orbit(0.0, 0.0, 2.0, float(fovy_deg), int(w), int(h))
        assert cam0.fovy == pytest.approx(float(fx["fovy"][k]), abs=1e-15)
        assert cam0.fovx == pytest.approx(float(fx["fovx"][k]), abs=1e-15)
        assert cam0.tanfovx == pytest.approx(float(fx["tanfovx"][k]), abs=1e-15)
        assert cam0.tanfovy == pytest.approx(float(fx["tanfovy"][k]), abs=1e-15)
        np.testing.assert_allclose(cam0.proj_gl.numpy(), fx["orbit_perspective"][k], atol=1e-6, rtol=0)
        for p in range(0, len(poses), 5):  # every 5th pose (the pose part is covered above for all of them)
            elev, azim, radius = (float(x) for x in poses[p])
            cam = orbit(elev, azim, radius, float(fovy_deg), int(w), int(h))
            np.testing.assert_allclose(cam.full_proj_transform.numpy(), fx["full_proj_transform"][p, k], atol=1e-6,
                                       rtol=0)
            np.testing.assert_allclose(cam.mvp_gl.T.numpy(), fx["mesh_clip_rowvec"][p, k], atol=1e-6, rtol=0)


def test_projection_matrix_is_dg_get_projection_matrix(fx):
    """``projection_matrix`` = DG ``getProjectionMatrix(near, far, fovx, fovy)^T``: our 3DGS projection, transposed."""
    for k, (fovy_deg, w, h) in enumerate(fx["intrinsics_fovydeg_w_h"]):
        cam = orbit(0.0, 0.0, 2.0, float(fovy_deg), int(w), int(h))
        np.testing.assert_allclose(cam.proj_3dgs.T.numpy(), fx["projection_matrix"][k], atol=1e-6, rtol=0)
        assert math.isclose(cam.tanfovx, math.tan(float(fx["fovx"][k]) / 2), rel_tol=1e-12)
