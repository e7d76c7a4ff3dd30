"""UV unwrapping with xatlas (DreamGaussian's ``auto_uv``, reference §2.10).

xatlas cuts the surface into charts and packs them into [0,1]^2; a vertex on a chart seam gets one copy per chart.
We re-index vertices through xatlas' ``vmapping`` so ``v``, ``vt`` and ``vn`` share one index buffer ``f`` (what
glTF and the rasterizer's ``interpolate`` need).

Official (DG/CG ``Mesh.auto_uv`` then ``auto_normal``, the default here): xatlas' default chart and pack options
(no gutter, atlas size chosen by xatlas), and vertex normals recomputed on the split mesh, so the copies of a seam
vertex get different normals (each averages only its own chart's faces; a shading crease along seams, and a
slightly different view-cosine mask in the bake). Named alternatives: ``padding > 0`` packs the charts for
``texture_size`` with that many empty texels between them; ``seam_normals="shared"`` carries the area-weighted
normals of the unsplit mesh over to every copy.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from cg_lightning.errors import CGError, ConfigError
from cg_lightning.mesh.mesh import Mesh

SEAM_NORMALS = ("split", "shared")


def unwrap_uv_arrays(v: np.ndarray, f: np.ndarray, texture_size: int | None = 1024,
                     padding: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas unwrap: (vmapping (V',) int64 into the input vertices, f (F,3) int64, vt (V',2) float32 in [0,1]).

    Chart options are xatlas' defaults. ``padding=0`` (official): pack options are xatlas' defaults too
    (``texture_size`` is then unused). ``padding > 0``: the atlas is packed for about ``texture_size`` texels with
    ``padding`` empty texels between charts, so bilinear splatting in the bake and bilinear/mip sampling in the
    renderer do not bleed one chart's colour into its neighbour. Faces keep the input order and winding:
    ``v_in[vmapping][f] == v_in[f_in]``.
    """
    import xatlas

    v = np.ascontiguousarray(v, dtype=np.float32)
    f = np.ascontiguousarray(f, dtype=np.uint32)
    if len(f) == 0:
        raise CGError("unwrap_uv: the mesh has no faces")
    atlas = _generate(xatlas, v, f, texture_size if padding > 0 else None, padding)
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


def unwrap_uv(mesh: Mesh, texture_size: int | None = 1024, padding: int = 0, seam_normals: str = "split") -> Mesh:
    """Copy of ``mesh`` with seams split, ``vt`` and ``vn`` aligned with ``v``; the albedo is dropped (its old UV
    layout no longer applies). With ``padding > 0`` pass the bake's ``texture_size`` so the chart gutters are
    ``padding`` texels. ``seam_normals``: "split" (official) or "shared" (module docstring)."""
    if seam_normals not in SEAM_NORMALS:
        raise ConfigError(f"mesh.seam_normals={seam_normals!r}; expected one of {SEAM_NORMALS}")
    if padding < 0:
        raise ConfigError(f"mesh.uv_padding={padding} must be >= 0")
    vmap, f, vt = unwrap_uv_arrays(mesh.v.detach().cpu().numpy(), mesh.f.detach().cpu().numpy(), texture_size,
                                   padding)
    dev = mesh.v.device
    idx = torch.from_numpy(vmap).to(dev)
    out = Mesh(v=mesh.v.detach()[idx], f=torch.from_numpy(f).to(dev), vt=torch.from_numpy(vt).to(dev, mesh.v.dtype))
    if seam_normals == "split":
        return out.auto_normals()
    return replace(out, vn=mesh.auto_normals().vn.detach()[idx])
