"""UV unwrapping with xatlas (DreamGaussian's ``auto_uv``, reference §2.10).

xatlas cuts the surface into charts and packs them into [0,1]^2; a vertex on a chart seam gets one copy per chart.
We re-index vertices through xatlas' ``vmapping`` so ``v``, ``vt`` and ``vn`` share one index buffer ``f`` (what
glTF and the rasterizer's ``interpolate`` need).

Normals are area-weighted normals of the *unsplit* mesh carried over through ``vmapping`` (DG recomputes them on the
split mesh, which gives the copies of a seam vertex different normals and a visible shading crease along seams).
"""

from __future__ import annotations

import numpy as np
import torch

from cg_lightning.errors import CGError
from cg_lightning.mesh.mesh import Mesh


def unwrap_uv_arrays(v: np.ndarray, f: np.ndarray, texture_size: int | None = 1024,
                     padding: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas unwrap: (vmapping (V',) int64 into the input vertices, f (F,3) int64, vt (V',2) float32 in [0,1]).

    Chart options are xatlas' defaults. Packing differs from DreamGaussian (which uses the defaults: no gutter,
    atlas size unrelated to the texture): with ``texture_size`` the atlas is packed for about that resolution
    with ``padding`` empty texels between charts, so bilinear splatting in the bake and bilinear/mip sampling in
    the renderer do not bleed one chart's colour into its neighbour. ``texture_size=None, padding=0`` gives
    xatlas' defaults. Faces keep the input order and winding: ``v_in[vmapping][f] == v_in[f_in]``.
    """
    import xatlas

    v = np.ascontiguousarray(v, dtype=np.float32)
    f = np.ascontiguousarray(f, dtype=np.uint32)
    if len(f) == 0:
        raise CGError("unwrap_uv: the mesh has no faces")
    atlas = _generate(xatlas, v, f, texture_size, padding)
    if atlas.atlas_count != 1:  # not expected with an estimated texel density; fall back to xatlas' defaults
        atlas = _generate(xatlas, v, f, None, 0)
    vmapping, indices, uvs = atlas[0]
    return vmapping.astype(np.int64), indices.astype(np.int64), uvs.astype(np.float32)


def _generate(xatlas, v: np.ndarray, f: np.ndarray, texture_size: int | None, padding: int):
    pack = xatlas.PackOptions()
    pack.padding = int(padding)
    if texture_size:
        pack.resolution = int(texture_size)  # texels_per_unit stays 0: estimated to roughly fill this resolution
    atlas = xatlas.Atlas()
    atlas.add_mesh(v, f)
    atlas.generate(xatlas.ChartOptions(), pack)
    return atlas


def unwrap_uv(mesh: Mesh, texture_size: int | None = 1024, padding: int = 2) -> Mesh:
    """Copy of ``mesh`` with seams split, ``vt`` and ``vn`` aligned with ``v``; the albedo is dropped (its old UV
    layout no longer applies). Pass the bake's ``texture_size`` so the chart gutters are ``padding`` texels."""
    vmap, f, vt = unwrap_uv_arrays(mesh.v.detach().cpu().numpy(), mesh.f.detach().cpu().numpy(), texture_size,
                                   padding)
    dev = mesh.v.device
    vn = mesh.auto_normals().vn  # of the unsplit mesh: seam copies share one normal
    idx = torch.from_numpy(vmap).to(dev)
    return Mesh(v=mesh.v.detach()[idx], f=torch.from_numpy(f).to(dev), vn=vn.detach()[idx],
                vt=torch.from_numpy(vt).to(dev, mesh.v.dtype))
