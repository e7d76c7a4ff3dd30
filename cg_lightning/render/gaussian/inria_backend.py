"""Backend ``inria``: adapter for diff-gaussian-rasterization, ashawkey's fork used by DreamGaussian.

That fork returns ``(image, radii, depth, alpha)``; the upstream graphdeco version lacks the alpha output and
is rejected with a clear message. ``means2d`` is a (N, 2) leaf holding the projected NDC centres; it is padded
to the (N, 3) ``means2D`` argument, so its ``.grad`` is exactly the kernel's viewspace-point gradient.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cg_lightning.cameras import Camera
from cg_lightning.errors import CGError
from cg_lightning.gaussians.model import GaussianModel
from cg_lightning.render.gaussian.base import GaussianRenderOutput, require_cuda

__all__ = ["InriaRasterizer"]

_INSTALL = (
    "pip install git+https://github.com/ashawkey/diff-gaussian-rasterization (needs the CUDA toolkit), "
    "or use renderer backend 'torch' / 'gsplat'"
)


def _import_dgr():
    try:
        import diff_gaussian_rasterization as dgr
    except ImportError as exc:
        raise CGError(f"renderer backend 'inria' needs diff_gaussian_rasterization: {_INSTALL}") from exc
    return dgr


class InriaRasterizer:
    """``module`` stands in for ``diff_gaussian_rasterization`` (default: the installed package, which needs
    CUDA); the CPU tests pass a recorder to check every argument against the official conventions.

    ``campos`` is the true camera centre ``c2w[:3, 3]``, as the torch and gsplat backends use for SH colours.
    DreamGaussian's ``MiniCam`` passes ``-c2w[:3, 3]`` (a sign slip that only matters for SH degree > 0, which
    its configs never use).
    """

    name = "inria"

    def __init__(self, module: Any = None) -> None:
        self.needs_cuda = module is None
        self.dgr = _import_dgr() if module is None else module
        if self.needs_cuda and not torch.cuda.is_available():
            raise CGError(
                f"renderer backend {self.name!r} needs a CUDA GPU; none is available (use 'torch' or 'auto')"
            )

    def render(
        self, model: GaussianModel, camera: Camera, bg_color: Tensor, scale_modifier: float = 1.0
    ) -> GaussianRenderOutput:
        means = model.means
        if self.needs_cuda:
            require_cuda(means, self.name)
        bg = torch.as_tensor(bg_color, dtype=means.dtype, device=means.device).reshape(3)
        view = camera.world_view_transform.to(means)
        full = camera.full_proj_transform.to(means)
        settings = self.dgr.GaussianRasterizationSettings(
            image_height=camera.height,
            image_width=camera.width,
            tanfovx=camera.tanfovx,
            tanfovy=camera.tanfovy,
            bg=bg,
            scale_modifier=float(scale_modifier),
            viewmatrix=view,
            projmatrix=full,
            sh_degree=model.sh_degree,
            campos=camera.position.to(means),
            prefiltered=False,
            debug=False,
        )
        with torch.no_grad():
            hom = torch.cat([means, torch.ones_like(means[:, :1])], dim=1) @ full
            ndc = hom[:, :2] / (hom[:, 3:4] + 1e-7)
        means2d = ndc.detach().requires_grad_(True)
        means2d_3 = torch.cat([means2d, torch.zeros_like(means2d[:, :1])], dim=1)
        result = self.dgr.GaussianRasterizer(raster_settings=settings)(
            means3D=means,
            means2D=means2d_3,
            shs=model.sh,
            colors_precomp=None,
            opacities=model.opacities,
            scales=model.scales,
            rotations=model.rotations,
            cov3D_precomp=None,
        )
        if not isinstance(result, tuple) or len(result) != 4:
            raise CGError(
                "this diff_gaussian_rasterization does not return (image, radii, depth, alpha); "
                f"DreamGaussian's fork is required: {_INSTALL}"
            )
        image, radii, depth, alpha = result
        return GaussianRenderOutput(
            image=image.clamp(0.0, 1.0),
            alpha=alpha.reshape(1, *alpha.shape[-2:]),
            depth=depth.reshape(1, *depth.shape[-2:]),
            radii=radii.to(torch.int32),
            means2d=means2d,
        )
