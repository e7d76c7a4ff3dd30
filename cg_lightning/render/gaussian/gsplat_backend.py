"""Backend ``gsplat``: thin adapter over gsplat's CUDA projection / tile intersection / rasterization kernels.

gsplat is called step by step (not through ``gsplat.rasterization``) so that the screen-space means can be
re-expressed in NDC before rasterization: the returned ``means2d.grad`` then has diff-gaussian-rasterization's
units. The arguments are chosen to reproduce 3DGS where gsplat lets us: the 0.3 px^2 low-pass, the z <= 0.2 near
cull and no far cull (3DGS culls only near), pixel centres at +0.5, colours ``max(SH + 0.5, 0)``, depth as an
extra channel over a zero background.

Two differences come from gsplat itself and cannot be switched off (README, "Deviations from the official
code"): alpha is clamped at 0.999 instead of 0.99, and a Gaussian may touch the tiles of its per-axis 3.33 sigma
box instead of the square of 3 sigma of its major axis. tests/test_gpu_gsplat_cpu.py measures both on a CPU,
running this adapter through gsplat's own PyTorch reference.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from cg_lightning.cameras import Camera
from cg_lightning.errors import CGError
from cg_lightning.gaussians.model import GaussianModel
from cg_lightning.render.gaussian.base import GaussianRenderOutput, require_cuda
from cg_lightning.render.gaussian.projection import NEAR_CULL

__all__ = ["GsplatRasterizer", "NO_FAR_CULL", "radius_3dgs"]

NO_FAR_CULL = 1e10  # 3DGS has no far plane for Gaussians (in_frustum tests z <= 0.2 only)


@torch.no_grad()
def radius_3dgs(conics: Tensor) -> Tensor:
    """3DGS' screen radius ``ceil(3 sqrt(lambda_max))`` of the 2D covariance, recovered from gsplat's conics.

    Reported as ``radii`` so that the screen-size statistics of densification mean what they mean with the
    official rasterizer (gsplat's own radii are per-axis 3.33 sigma).
    """
    a, b, c = conics.unbind(-1)
    det_conic = a * c - b * b
    cxx, cxy, cyy = c / det_conic, -b / det_conic, a / det_conic
    mid = 0.5 * (cxx + cyy)
    lam = mid + torch.sqrt(torch.clamp(mid * mid - (cxx * cyy - cxy * cxy), min=0.1))
    return torch.ceil(3.0 * torch.sqrt(lam)).nan_to_num(0.0)


def _import_gsplat():
    try:
        import gsplat
    except ImportError as exc:
        raise CGError(
            "renderer backend 'gsplat' needs the gsplat package: pip install gsplat==1.5.3 "
            "(CUDA toolkit required; its kernels compile on first use), or use backend 'torch'"
        ) from exc
    return gsplat


class GsplatRasterizer:
    """``kernels`` is anything with gsplat's ``fully_fused_projection``, ``spherical_harmonics``,
    ``isect_tiles``, ``isect_offset_encode`` and ``rasterize_to_pixels`` (default: the gsplat package, which
    needs CUDA); the CPU tests pass stand-ins built on gsplat's PyTorch reference."""

    name = "gsplat"

    def __init__(self, tile_size: int = 16, eps2d: float = 0.3, kernels: Any = None) -> None:
        if kernels is None:
            kernels = _import_gsplat()
            if not torch.cuda.is_available():
                raise CGError(
                    f"renderer backend {self.name!r} needs a CUDA GPU; none is available (use 'torch' or 'auto')"
                )
            self.needs_cuda = True
        else:
            self.needs_cuda = False
        self.gsplat = kernels
        self.tile_size, self.eps2d = int(tile_size), float(eps2d)

    def _colors(self, model: GaussianModel, camera: Camera, visible: Tensor) -> Tensor:
        """(N, 3) colours as gsplat's ``rasterization`` computes them (its "apple-to-apple with Inria" path)."""
        if model.sh_degree == 0:
            return model.colors
        dirs = model.means - camera.position.to(model.means)
        sh = self.gsplat.spherical_harmonics(model.sh_degree, dirs, model.sh, masks=visible)
        return torch.clamp_min(sh + 0.5, 0.0)

    def render(
        self, model: GaussianModel, camera: Camera, bg_color: Tensor, scale_modifier: float = 1.0
    ) -> GaussianRenderOutput:
        gs = self.gsplat
        means = model.means
        if self.needs_cuda:
            require_cuda(means, self.name)
        width, height = camera.width, camera.height
        bg = torch.as_tensor(bg_color, dtype=means.dtype, device=means.device).reshape(3)
        viewmat = camera.w2c.to(means)[None]
        ks = camera.K.to(means)[None]
        radii, pix, depths, conics, _ = gs.fully_fused_projection(
            means,
            None,
            model.rotations,
            model.scales * scale_modifier,
            viewmat,
            ks,
            width,
            height,
            eps2d=self.eps2d,
            near_plane=NEAR_CULL,
            far_plane=NO_FAR_CULL,
            packed=False,
        )
        half = pix.new_tensor([0.5 * width, 0.5 * height])
        means2d = (pix[0] - half) / half  # NDC; its grad is dL/dNDC like diff-gaussian-rasterization
        means2d.retain_grad()
        pix = (means2d * half + half)[None]
        visible = (radii[0] > 0).all(dim=-1)
        feats = torch.cat([self._colors(model, camera, visible), depths[0, :, None]], dim=-1)[None]
        tiles_w, tiles_h = math.ceil(width / self.tile_size), math.ceil(height / self.tile_size)
        _, isect_ids, flatten_ids = gs.isect_tiles(pix, radii, depths, self.tile_size, tiles_w, tiles_h)
        offsets = gs.isect_offset_encode(isect_ids, 1, tiles_w, tiles_h).reshape(1, tiles_h, tiles_w)
        backgrounds = torch.cat([bg, bg.new_zeros(1)])[None]
        colors, alphas = gs.rasterize_to_pixels(
            pix,
            conics,
            feats,
            model.opacities[:, 0][None],
            width,
            height,
            self.tile_size,
            offsets,
            flatten_ids,
            backgrounds=backgrounds,
        )
        return GaussianRenderOutput(
            image=colors[0, ..., :3].permute(2, 0, 1).clamp(0.0, 1.0),
            alpha=alphas[0].permute(2, 0, 1),
            depth=colors[0, ..., 3][None],
            radii=torch.where(visible, radius_3dgs(conics[0]), 0.0).to(torch.int32),
            means2d=means2d,
        )
