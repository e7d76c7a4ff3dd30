"""The mesh rasterizer protocol (nvdiffrast's four ops) and the backend factory.

Why nvdiffrast's shape: stage 2, baking and the oracle prior are written once against ``rasterize / interpolate /
texture / antialias`` and run on either the CUDA library or our pure-PyTorch re-implementation.

Shared formats (identical in every backend, so outputs can be mixed):
- ``pos_clip`` (B,V,4) clip-space positions (``mvp_gl @ [x, y, z, 1]``), ``tri`` (F,3) int32 vertex indices.
- ``rast`` (B,H,W,4) float: perspective-correct barycentrics ``(u, v)`` (the point is ``u*v0 + v*v1 + (1-u-v)*v2``),
  ``z/w`` (NDC depth), ``tri_id + 1`` (0 = no triangle). Row ``i`` / column ``j`` samples NDC
  ``((2j+1)/W - 1, (2i+1)/H - 1)``; with the row-flipped ``Camera.proj_gl``, row 0 is the top of the image.
- ``texture`` sampling: ``uv`` in [0,1] (``u`` -> column, ``v`` -> row 0 first), texel centres at ``(i + 0.5)/size``,
  ``boundary_mode`` ``"wrap"`` (default, like nvdiffrast) or ``"clamp"``.
- ``rasterize(..., with_db=True)`` also returns ``rast_db`` (B,H,W,4) = (du/dX, du/dY, dv/dX, dv/dY): the exact
  screen-space derivatives of the barycentrics ``u, v`` in pixel units (X = column, Y = row), and
  ``interpolate(..., rast_db=rast_db)`` then also returns the attribute derivatives (B,H,W,2C) = per attribute
  (d/dX, d/dY): nvdiffrast's ``interpolate(..., rast_db=rast_db, diff_attrs='all')``. For ``uv`` that is ``uv_da``.
- Mip level for ``"linear-mipmap-linear"`` (nvdiffrast's ``calculateMipLevel``): with ``J`` the Jacobian of
  ``uv * size`` w.r.t. the pixel (from ``uv_da``), ``lambda = 0.5 log2(major axis^2 of the footprint ellipse of J)
  + mip_level_bias``, clamped to [0, number of levels - 1]. When ``uv_da`` is not given it is estimated from ``uv``
  itself by :func:`estimate_uv_da` (finite differences between neighbouring pixels, taking the smaller one-sided
  difference so UV seams and silhouettes do not blur); ``render_mesh`` always passes the exact derivatives.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from cg_lightning.errors import ConfigError

FILTER_MODES = ("linear", "linear-mipmap-linear")
BOUNDARY_MODES = ("wrap", "clamp")


@runtime_checkable
class MeshRasterizer(Protocol):
    """Differentiable triangle rasterizer with nvdiffrast's semantics (see module docstring for the formats)."""

    name: str

    def rasterize(self, pos_clip: Tensor, tri: Tensor, resolution: tuple[int, int], *,
                  with_db: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """(B,H,W,4) ``[u, v, z/w, tri_id + 1]``; differentiable w.r.t. ``pos_clip`` through ``u, v, z/w``.
        ``with_db``: returns ``(rast, rast_db)``, ``rast_db`` the barycentric pixel derivatives (0 off-mesh)."""
        ...

    def interpolate(self, attr: Tensor, rast: Tensor, tri: Tensor, *,
                    rast_db: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """Per-pixel barycentric interpolation of vertex attributes (B,V,C) or (V,C) -> (B,H,W,C); 0 off-mesh.
        With ``rast_db``: returns ``(out, out_da)``, ``out_da`` (B,H,W,2C) the pixel derivatives of every attribute."""
        ...

    def texture(self, tex: Tensor, uv: Tensor, filter_mode: str = "linear", uv_da: Tensor | None = None,
                mip_level_bias: Tensor | None = None, max_mip_level: int | None = None,
                boundary_mode: str = "wrap") -> Tensor:
        """Sample ``tex`` (B|1,Ht,Wt,C) at ``uv`` (B,H,W,2) -> (B,H,W,C); differentiable w.r.t. ``tex`` and ``uv``."""
        ...

    def antialias(self, color: Tensor, rast: Tensor, pos_clip: Tensor, tri: Tensor) -> Tensor:
        """Blend colours across silhouette edges by coverage; gives gradients w.r.t. silhouette vertex positions."""
        ...


def check_filter_args(filter_mode: str, boundary_mode: str) -> None:
    if filter_mode not in FILTER_MODES:
        raise ConfigError(f"texture filter_mode={filter_mode!r}; expected one of {FILTER_MODES}")
    if boundary_mode not in BOUNDARY_MODES:
        raise ConfigError(f"texture boundary_mode={boundary_mode!r}; expected one of {BOUNDARY_MODES}")


def estimate_uv_da(uv: Tensor, mask: Tensor | None = None) -> Tensor:
    """Screen-space UV derivatives (B,H,W,4) = (du/dx, du/dy, dv/dx, dv/dy) per pixel, by finite differences.

    For each axis the forward and backward differences are candidates; a candidate is valid when both pixels are in
    ``mask`` (B,H,W) (all pixels when None), and the one with the smaller UV step wins. Across a UV seam or a
    silhouette one side jumps, the other does not, so the estimate stays the in-triangle derivative. Pixels with no
    valid neighbour get 0 (finest mip level). No gradient flows through the estimate (it only picks a level).
    """
    uv = uv.detach()
    if mask is None:
        mask = torch.ones(uv.shape[:-1], dtype=torch.bool, device=uv.device)
    mask = mask.bool()

    def axis_derivative(dim: int) -> Tensor:
        n = uv.shape[dim]
        d = torch.diff(uv, dim=dim)  # d[i] = uv[i+1] - uv[i]
        ok = mask.narrow(dim, 0, n - 1) & mask.narrow(dim, 1, n - 1)
        inf = torch.full_like(d[..., :1], float("inf"))
        mag = torch.where(ok.unsqueeze(-1), d.norm(dim=-1, keepdim=True), inf)
        pad_shape = list(d.shape)
        pad_shape[dim] = 1
        zeros = d.new_zeros(pad_shape)
        infs = torch.full(pad_shape[:-1] + [1], float("inf"), dtype=d.dtype, device=d.device)
        fwd, fwd_mag = torch.cat([d, zeros], dim), torch.cat([mag, infs], dim)
        bwd, bwd_mag = torch.cat([zeros, d], dim), torch.cat([infs, mag], dim)
        best = torch.where(fwd_mag <= bwd_mag, fwd, bwd)
        best_mag = torch.minimum(fwd_mag, bwd_mag)
        return torch.where(torch.isfinite(best_mag), best, torch.zeros_like(best))

    dx = axis_derivative(2)  # along columns (screen x)
    dy = axis_derivative(1)  # along rows (screen y)
    return torch.stack([dx[..., 0], dy[..., 0], dx[..., 1], dy[..., 1]], dim=-1)


def mip_level_from_uv_da(uv_da: Tensor, tex_hw: tuple[int, int]) -> Tensor:
    """Continuous mip level (B,H,W), clamped at 0: nvdiffrast's ``calculateMipLevel``.

    The texel-space Jacobian ``J = [[ds/dX, ds/dY], [dt/dX, dt/dY]]`` (``s = u * width``, ``t = v * height``) maps the
    pixel to an ellipse; the level is ``log2`` of its major semi-axis, ``0.5 log2(l2b + sqrt(l2n))`` with
    ``A = |J e_x|^2, B = |J e_y|^2, C = (J e_x).(J e_y)``, ``l2b = (A + B)/2``, ``l2n = (A - B)^2/4 + C^2``. That is
    the largest singular value of ``J``: at least the longer of the two column lengths, more when they are skewed.
    """
    th, tw = tex_hw
    dudx, dudy, dvdx, dvdy = uv_da.unbind(-1)
    dsdx, dsdy, dtdx, dtdy = dudx * tw, dudy * tw, dvdx * th, dvdy * th
    a = dsdx * dsdx + dtdx * dtdx
    b = dsdy * dsdy + dtdy * dtdy
    c = dsdx * dsdy + dtdx * dtdy
    l2b = 0.5 * (a + b)
    l2a = torch.sqrt(0.25 * (a - b) ** 2 + c * c)
    major_sqr = (l2b + l2a).clamp_min(1e-30)
    return (0.5 * torch.log2(major_sqr)).clamp_min(0.0)


def cuda_nvdiffrast_available() -> bool:
    """True when CUDA is usable and ``nvdiffrast.torch`` imports."""
    if not torch.cuda.is_available():
        return False
    try:
        import nvdiffrast.torch  # noqa: F401
    except Exception:
        return False
    return True


def build_mesh_rasterizer(backend: str = "auto") -> MeshRasterizer:
    """``auto`` -> nvdiffrast when CUDA and the package are available (CPU tensors then go to the torch backend),
    else the pure-PyTorch backend; ``torch`` / ``nvdiffrast`` force one (nvdiffrast raises CGError if missing)."""
    from cg_lightning.render.mesh.nvdiffrast_backend import NvdiffrastMeshRasterizer
    from cg_lightning.render.mesh.torch_backend import TorchMeshRasterizer

    if backend == "auto":
        if cuda_nvdiffrast_available():
            return NvdiffrastMeshRasterizer(cpu_fallback=TorchMeshRasterizer())
        return TorchMeshRasterizer()
    if backend == "torch":
        return TorchMeshRasterizer()
    if backend == "nvdiffrast":
        return NvdiffrastMeshRasterizer()
    raise ConfigError(f"renderer.mesh={backend!r}; expected auto | torch | nvdiffrast")


__all__ = [
    "BOUNDARY_MODES",
    "FILTER_MODES",
    "MeshRasterizer",
    "build_mesh_rasterizer",
    "check_filter_args",
    "cuda_nvdiffrast_available",
    "estimate_uv_da",
    "mip_level_from_uv_da",
]
