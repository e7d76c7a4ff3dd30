"""EWA projection of 3D Gaussians to screen space, as diff-gaussian-rasterization's ``preprocessCUDA``.

Per Gaussian: camera-space mean (OpenCV), the local affine Jacobian of the perspective map with the view
direction clamped to 1.3 x tan(fov/2) (keeps huge off-screen Gaussians bounded), 2D covariance ``J W Sigma W^T
J^T + 0.3 I`` (the 0.3 px^2 low-pass filter), its inverse (conic), a 3-sigma radius from the larger eigenvalue
and the 16 x 16 tile rectangle it touches. Gaussians closer than z = 0.2 are culled, like 3DGS'
``in_frustum``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cg_lightning.cameras import Camera
from cg_lightning.gaussians.model import quat_to_rotmat

__all__ = ["Projection", "project_gaussians", "NEAR_CULL", "LOWPASS", "TILE"]

NEAR_CULL = 0.2  # 3DGS in_frustum: p_view.z <= 0.2 is culled
LOWPASS = 0.3  # px^2 added to the 2D covariance diagonal
TILE = 16


@dataclass
class Projection:
    means2d: Tensor  # (N, 2) NDC centres (x right, y down), the tensor whose grad feeds densification
    pix: Tensor  # (N, 2) pixel coordinates, pixel centres at +0.5 (derived from means2d)
    depth: Tensor  # (N,) camera-space z
    conic: Tensor  # (N, 3) inverse 2D covariance (a, b, c) of [[a, b], [b, c]]
    cov2d: Tensor  # (N, 3) 2D covariance (xx, xy, yy) incl. low-pass
    radii: Tensor  # (N,) int32, 0 = culled
    rect: Tensor  # (N, 4) int64 tile rectangle x0, y0, x1, y1 (exclusive max)


def project_gaussians(
    means: Tensor, scales: Tensor, rotations: Tensor, camera: Camera, tile: int = TILE
) -> Projection:
    """Project Gaussians given world means (N,3), activated scales (N,3) and quaternions (N,4, wxyz)."""
    w2c = camera.w2c.to(means)
    rot, trans = w2c[:3, :3], w2c[:3, 3]
    t = means @ rot.T + trans
    z = t[:, 2]
    in_front = z > NEAR_CULL
    z_safe = torch.where(in_front, z, torch.ones_like(z))  # keeps culled rows finite (no NaN grads)
    tanx, tany = camera.tanfovx, camera.tanfovy
    fx, fy, width, height = camera.fx, camera.fy, camera.width, camera.height

    x_over_z, y_over_z = t[:, 0] / z_safe, t[:, 1] / z_safe
    means2d = torch.stack([x_over_z / tanx, y_over_z / tany], dim=-1)
    if means2d.requires_grad:
        means2d.retain_grad()
    half = means2d.new_tensor([0.5 * width, 0.5 * height])
    pix = means2d * half + half

    # Jacobian with the 1.3 tan(fov) clamp (only inside J, not for the mean).
    tx = x_over_z.clamp(-1.3 * tanx, 1.3 * tanx) * z_safe
    ty = y_over_z.clamp(-1.3 * tany, 1.3 * tany) * z_safe
    zero = torch.zeros_like(z_safe)
    jac = torch.stack(
        [fx / z_safe, zero, -fx * tx / (z_safe * z_safe), zero, fy / z_safe, -fy * ty / (z_safe * z_safe)],
        dim=-1,
    ).reshape(-1, 2, 3)
    m = quat_to_rotmat(rotations) * scales[:, None, :]  # world-space R S
    tm = jac @ (rot @ m)  # (N, 2, 3): J W R S
    cov = tm @ tm.transpose(1, 2)
    a = cov[:, 0, 0] + LOWPASS
    b = cov[:, 0, 1]
    c = cov[:, 1, 1] + LOWPASS
    det = a * c - b * b
    ok = in_front & (det > 0)
    det_safe = torch.where(ok, det, torch.ones_like(det))
    conic = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)

    with torch.no_grad():
        mid = 0.5 * (a + c)
        lam = mid + torch.sqrt(torch.clamp(mid * mid - det, min=0.1))
        radius = torch.ceil(3.0 * torch.sqrt(lam))
        radius = torch.where(ok & torch.isfinite(radius), radius, torch.zeros_like(radius))
        # 3DGS getRect in its own pixel frame (centres at integers): p = pix - 0.5.
        grid = pix.new_tensor([(width + tile - 1) // tile, (height + tile - 1) // tile])
        p = pix.detach() - 0.5
        lo = torch.floor((p - radius[:, None]) / tile).nan_to_num(0.0).clamp(min=0)
        hi = torch.floor((p + radius[:, None] + tile - 1) / tile).nan_to_num(0.0).clamp(min=0)
        lo = torch.minimum(lo, grid).long()
        hi = torch.minimum(hi, grid).long()
        area = (hi - lo).prod(dim=-1)
        visible = ok & (radius > 0) & (area > 0)
        radii = torch.where(visible, radius, torch.zeros_like(radius)).to(torch.int32)
        rect = torch.cat([lo, hi], dim=-1)
        rect[~visible] = 0
    cov2d = torch.stack([a, b, c], dim=-1)
    return Projection(means2d=means2d, pix=pix, depth=z, conic=conic, cov2d=cov2d, radii=radii, rect=rect)
