"""Thin adapter from the :class:`MeshRasterizer` protocol to nvdiffrast (CUDA).

nvdiffrast is imported lazily on first use, so this module imports on machines without it. One
``RasterizeCudaContext`` is created per CUDA device. Inputs are made contiguous and ``tri`` int32 as nvdiffrast
requires. With ``cpu_fallback`` (what ``build_mesh_rasterizer("auto")`` sets), CPU tensors are routed to that
backend instead of failing, so code written against ``auto`` also runs on CPU tensors on a GPU machine.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cg_lightning.errors import CGError
from cg_lightning.render.mesh.base import MeshRasterizer, check_filter_args, estimate_uv_da

_INSTALL_HINT = ("nvdiffrast is not installed (CUDA only). Install it with "
                 "`pip install git+https://github.com/NVlabs/nvdiffrast` (needs a CUDA toolkit), "
                 "or use renderer.mesh=torch.")


def _import_dr() -> Any:
    try:
        import nvdiffrast.torch as dr
    except Exception as exc:
        raise CGError(f"{_INSTALL_HINT} (import failed: {exc})") from exc
    return dr


class NvdiffrastMeshRasterizer:
    """nvdiffrast's ``rasterize / interpolate / texture / antialias`` behind the protocol."""

    name = "nvdiffrast"

    def __init__(self, cpu_fallback: MeshRasterizer | None = None) -> None:
        self.cpu_fallback = cpu_fallback
        self._contexts: dict[torch.device, Any] = {}

    def _fallback(self, t: Tensor) -> MeshRasterizer | None:
        if t.is_cuda:
            return None
        if self.cpu_fallback is not None:
            return self.cpu_fallback
        raise CGError(f"nvdiffrast needs CUDA tensors, got a tensor on {t.device}; use renderer.mesh=torch or auto.")

    def _context(self, device: torch.device) -> Any:
        if device not in self._contexts:
            dr = _import_dr()
            self._contexts[device] = dr.RasterizeCudaContext(device=device)
        return self._contexts[device]

    def rasterize(self, pos_clip: Tensor, tri: Tensor, resolution: tuple[int, int], *,
                  with_db: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        if (fb := self._fallback(pos_clip)) is not None:
            return fb.rasterize(pos_clip, tri, resolution, with_db=with_db)
        dr = _import_dr()
        rast, rast_db = dr.rasterize(self._context(pos_clip.device), pos_clip.float().contiguous(),
                                     tri.to(device=pos_clip.device, dtype=torch.int32).contiguous(),
                                     (int(resolution[0]), int(resolution[1])))
        return (rast, rast_db) if with_db else rast

    def interpolate(self, attr: Tensor, rast: Tensor, tri: Tensor, *,
                    rast_db: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        if (fb := self._fallback(rast)) is not None:
            return fb.interpolate(attr, rast, tri, rast_db=rast_db)
        dr = _import_dr()
        tri32 = tri.to(device=rast.device, dtype=torch.int32).contiguous()
        if rast_db is None:
            out, _ = dr.interpolate(attr.float().contiguous(), rast.contiguous(), tri32)
            return out
        # exact pixel derivatives of every attribute (DreamGaussian's texc_db for the mip level)
        return dr.interpolate(attr.float().contiguous(), rast.contiguous(), tri32, rast_db=rast_db.contiguous(),
                              diff_attrs="all")

    def texture(self, tex: Tensor, uv: Tensor, filter_mode: str = "linear", uv_da: Tensor | None = None,
                mip_level_bias: Tensor | None = None, max_mip_level: int | None = None,
                boundary_mode: str = "wrap") -> Tensor:
        if (fb := self._fallback(uv)) is not None:
            return fb.texture(tex, uv, filter_mode, uv_da, mip_level_bias, max_mip_level, boundary_mode)
        check_filter_args(filter_mode, boundary_mode)
        dr = _import_dr()
        kwargs: dict[str, Any] = {"filter_mode": filter_mode, "boundary_mode": boundary_mode}
        if filter_mode == "linear-mipmap-linear":
            kwargs["uv_da"] = (uv_da if uv_da is not None else estimate_uv_da(uv)).float().contiguous()
            if mip_level_bias is not None:
                kwargs["mip_level_bias"] = mip_level_bias.float().contiguous()
            if max_mip_level is not None:
                kwargs["max_mip_level"] = int(max_mip_level)
        return dr.texture(tex.float().contiguous(), uv.float().contiguous(), **kwargs)

    def antialias(self, color: Tensor, rast: Tensor, pos_clip: Tensor, tri: Tensor) -> Tensor:
        if (fb := self._fallback(color)) is not None:
            return fb.antialias(color, rast, pos_clip, tri)
        dr = _import_dr()
        return dr.antialias(color.contiguous(), rast.contiguous(), pos_clip.float().contiguous(),
                            tri.to(device=color.device, dtype=torch.int32).contiguous())
