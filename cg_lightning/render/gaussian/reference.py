"""Naive O(pixels x Gaussians) rasterizer written the way the 3DGS CUDA kernel reads, for testing only.

Independent of the tile backend on purpose: it projects with the 3DGS row-vector view/projection matrices and
``ndc2Pix`` (pixel centres at integers), builds covariances as ``R S S^T R^T`` directly, and composites every
pixel by a sequential loop over depth-sorted Gaussians with the kernel's literal skip / early-stop rules.
Autograd provides the gradients. Far too slow for training (seconds for a few hundred Gaussians at 64 px).
"""

from __future__ import annotations

import torch
from torch import Tensor

from cg_lightning.cameras import Camera
from cg_lightning.gaussians.model import GaussianModel
from cg_lightning.render.gaussian.base import GaussianRenderOutput, gaussian_colors

__all__ = ["render_reference"]


def render_reference(
    model: GaussianModel,
    camera: Camera,
    bg_color: Tensor,
    scale_modifier: float = 1.0,
    tile_cull: bool = True,
    tile: int = 16,
) -> GaussianRenderOutput:
    """Render like diff-gaussian-rasterization; ``tile_cull`` reproduces its 3-sigma tile rectangles."""
    means = model.means
    dev, n = means.device, means.shape[0]
    width, height = camera.width, camera.height
    bg = torch.as_tensor(bg_color, dtype=means.dtype, device=dev).reshape(3)
    view = camera.world_view_transform.to(means)  # row-vector convention: p_view = p_hom @ view
    full = camera.full_proj_transform.to(means)
    hom = torch.cat([means, torch.ones_like(means[:, :1])], dim=1)
    p_view = (hom @ view)[:, :3]
    p_hom = hom @ full
    ndc = p_hom[:, :2] / (p_hom[:, 3:4] + 1e-7)
    if ndc.requires_grad:
        ndc.retain_grad()
    px = ((ndc[:, 0] + 1.0) * width - 1.0) * 0.5
    py = ((ndc[:, 1] + 1.0) * height - 1.0) * 0.5

    # 2D covariance (EWA) exactly as computeCov2D.
    focal_x, focal_y = width / (2.0 * camera.tanfovx), height / (2.0 * camera.tanfovy)
    z = p_view[:, 2]
    front = z > 0.2
    zs = torch.where(front, z, torch.ones_like(z))
    limx, limy = 1.3 * camera.tanfovx, 1.3 * camera.tanfovy
    tx = torch.clamp(p_view[:, 0] / zs, -limx, limx) * zs
    ty = torch.clamp(p_view[:, 1] / zs, -limy, limy) * zs
    jac = torch.zeros(n, 2, 3, dtype=means.dtype, device=dev)
    jac[:, 0, 0] = focal_x / zs
    jac[:, 0, 2] = -focal_x * tx / (zs * zs)
    jac[:, 1, 1] = focal_y / zs
    jac[:, 1, 2] = -focal_y * ty / (zs * zs)
    rot = view[:3, :3].T  # world -> camera rotation (column form)
    cov3d = model.covariances(scale_modifier)
    cov = jac @ rot @ cov3d @ rot.T @ jac.transpose(1, 2)
    ca, cb, cc = cov[:, 0, 0] + 0.3, cov[:, 0, 1], cov[:, 1, 1] + 0.3
    det = ca * cc - cb * cb
    ok = front & (det != 0)
    det_s = torch.where(ok, det, torch.ones_like(det))
    con_a, con_b, con_c = cc / det_s, -cb / det_s, ca / det_s

    with torch.no_grad():
        mid = 0.5 * (ca + cc)
        lam = mid + torch.sqrt(torch.clamp(mid * mid - det, min=0.1))
        radius = torch.ceil(3.0 * torch.sqrt(lam))
        gx, gy = (width + tile - 1) // tile, (height + tile - 1) // tile
        x0 = torch.clamp(torch.floor((px - radius) / tile), min=0, max=gx)
        x1 = torch.clamp(torch.floor((px + radius + tile - 1) / tile), min=0, max=gx)
        y0 = torch.clamp(torch.floor((py - radius) / tile), min=0, max=gy)
        y1 = torch.clamp(torch.floor((py + radius + tile - 1) / tile), min=0, max=gy)
        visible = ok & ((x1 - x0) * (y1 - y0) > 0)
        radii = torch.where(visible, radius, torch.zeros_like(radius)).to(torch.int32)

    colors = gaussian_colors(model, camera)
    opac = model.opacities[:, 0]
    yy, xx = torch.meshgrid(
        torch.arange(height, device=dev, dtype=means.dtype),
        torch.arange(width, device=dev, dtype=means.dtype),
        indexing="ij",
    )
    xx, yy = xx.reshape(-1), yy.reshape(-1)
    tile_x, tile_y = torch.floor(xx / tile), torch.floor(yy / tile)
    n_pix = xx.numel()
    color = torch.zeros(n_pix, 3, dtype=means.dtype, device=dev)
    depth = torch.zeros(n_pix, dtype=means.dtype, device=dev)
    trans = torch.ones(n_pix, dtype=means.dtype, device=dev)
    done = torch.zeros(n_pix, dtype=torch.bool, device=dev)
    order = torch.argsort(z.detach(), stable=True).tolist()
    for i in order:
        if not bool(visible[i]):
            continue
        dx, dy = px[i] - xx, py[i] - yy
        power = -0.5 * (con_a[i] * dx * dx + con_c[i] * dy * dy) - con_b[i] * dx * dy
        alpha = torch.clamp(opac[i] * torch.exp(power), max=0.99)
        skip = (power > 0) | (alpha < 1.0 / 255.0)
        if tile_cull:
            inside = (tile_x >= x0[i]) & (tile_x < x1[i]) & (tile_y >= y0[i]) & (tile_y < y1[i])
            skip = skip | ~inside
        test_t = trans * (1.0 - alpha)
        stop = ~skip & ~done & (test_t < 1e-4)
        use = ~skip & ~done & ~stop
        w = torch.where(use, alpha * trans, torch.zeros_like(alpha))
        color = color + w[:, None] * colors[i]
        depth = depth + w * z[i]
        trans = torch.where(use, test_t, trans)
        done = done | stop
    image = color + trans[:, None] * bg
    return GaussianRenderOutput(
        image=image.T.reshape(3, height, width).clamp(0.0, 1.0),
        alpha=(1.0 - trans).reshape(1, height, width),
        depth=depth.reshape(1, height, width),
        radii=radii,
        means2d=ndc,
    )
