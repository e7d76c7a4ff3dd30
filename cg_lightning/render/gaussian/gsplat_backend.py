"""Backend ``gsplat``: thin adapter over gsplat's CUDA projection / tile intersection / rasterization kernels.

gsplat is called step by step (not through ``gsplat.rasterization``) so that the screen-space means can be
re-expressed in NDC before rasterization: the returned ``means2d.grad`` then has diff-gaussian-rasterization's
units. Differences to the torch backend that a user may notice: gsplat bounds a Gaussian by 3.33 sigma per
axis (3DGS: 3 sigma of the major axis) and clamps alpha at 0.999 instead of 0.99.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cg_lightning.cameras import Camera
from cg_lightning.errors import CGError
from cg_lightning.gaussians.model import GaussianModel
from cg_lightning.render.gaussian.base import GaussianRenderOutput, gaussian_colors, require_cuda
from cg_lightning.render.gaussian.projection import NEAR_CULL

__all__ = ["GsplatRasterizer"]


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
    name = "gsplat"

    def __init__(self, tile_size: int = 16, eps2d: float = 0.3) -> None:
        self.gsplat = _import_gsplat()
        if not torch.cuda.is_available():
            raise CGError(
                f"renderer backend {self.name!r} needs a CUDA GPU; none is available (use 'torch' or 'auto')"
            )
        self.tile_size, self.eps2d = int(tile_size), float(eps2d)

    def render(
        self, model: GaussianModel, camera: Camera, bg_color: Tensor, scale_modifier: float = 1.0
    ) -> GaussianRenderOutput:
        gs = self.gsplat
        means = model.means
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
            far_plane=camera.far,
            packed=False,
        )
        half = pix.new_tensor([0.5 * width, 0.5 * height])
        means2d = (pix[0] - half) / half  # NDC; its grad is dL/dNDC like diff-gaussian-rasterization
        means2d.retain_grad()
        pix = (means2d * half + half)[None]
        feats = torch.cat([gaussian_colors(model, camera), depths[0, :, None]], dim=-1)[None]
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
            radii=radii[0].max(dim=-1).values.to(torch.int32),
            means2d=means2d,
        )
