"""Colour back-projection: bake multi-view renders of the Gaussians into the UV texture of the extracted mesh.

The official bake (CG ``stage1.py`` ``save_model(mode='geo+tex')``, DG ``main.py`` the same; reference §2.11), which
is the default here:

1. 26 orbit views in the official order (8 azimuths at elevation 0, then at -45, then at +45, then the two poles).
   Per view the mesh is rasterised; every pixel that sees the mesh at a view cosine > 0.5 carries its colour to its
   UV position (UVs clamped to [0, 1]).
2. Splatting is DG ``grid_put.py``'s ``mipmap_linear_grid_put_2d``: bilinear weights onto texels at ``i / (size-1)``
   (the base index clamped to ``size - 2``), first at full size, then at size/2, size/4, ... while the size stays
   above ``min_resolution``, each coarser level filling only the texels that are still empty.
3. Views are accumulated first-view-wins: a view adds its sums and counts only to texels whose count so far is
   below 0.1; the colour is sum / count.
4. Unseen texels within 32 4-connected dilations of the seen region copy the nearest texel of the seen region's
   outer 3-texel band (binary erosion with the image border counting as unseen, as scipy's default does).

Named alternatives (``conf/mesh``; README "Deviations from the official code"):

- ``blend="best"``: a texel takes the view that sees it most head-on (highest mean view cosine of the pixels splatted
  into it). Grazing views sample the surface sparsely and amplify mesh/Gaussian misalignment.
- ``texel_mapping="centered"``: texel centres at ``(i + 0.5) / size``, the convention the renderer samples with,
  out-of-range neighbours dropped (the official ``i / (size-1)`` mapping is off by up to half a texel at the edges).
- ``inpaint="euclidean"``: the fill region is the Euclidean disc of radius ``inpaint_dilation`` (not an L1 diamond),
  the nearest rim texel comes from an exact distance transform, the image border does not erode the rim.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cg_lightning.cameras import Camera, orbit
from cg_lightning.errors import CGError, ConfigError
from cg_lightning.mesh.mesh import Mesh, normalize_or_default
from cg_lightning.render.mesh.base import MeshRasterizer

BAKE_ELEVATIONS = (0.0, -45.0, 45.0)
BAKE_AZIMUTHS = (0.0, 45.0, -45.0, 90.0, -90.0, 135.0, -135.0, 180.0)
BLEND_MODES = ("first", "best")
TEXEL_MAPPINGS = ("official", "centered")
INPAINT_MODES = ("dilate", "euclidean")
# DG: a texel whose accumulated count is below this has not been "written" by an earlier view yet.
_WRITTEN = 0.1


def default_bake_views() -> list[tuple[float, float]]:
    """The 26 (elevation, azimuth) pairs in degrees, front view first, then top (-89.9) and bottom (+89.9)."""
    views = [(e, a) for e in BAKE_ELEVATIONS for a in BAKE_AZIMUTHS]
    return views + [(-89.9, 0.0), (89.9, 0.0)]


# ----------------------------------------------------------------------------- splatting (one level)
def grid_put_linear(coords: Tensor, values: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """DG ``linear_grid_put_2d(..., return_count=True)``: (sums (H,W,C), counts (H,W)).

    ``coords`` (N,2) in [-1,1] with ``coords[:,0]`` along rows; texel index ``(c*0.5+0.5)*(size-1)``, base index
    floored and clamped to [0, size-2] (so a point on the last row/column gives weight 1 to it). Contributions are
    added in the official order (all top-left corners, then top-right, bottom-left, bottom-right).
    """
    idx = (coords * 0.5 + 0.5) * torch.tensor([height - 1, width - 1], dtype=torch.float32, device=coords.device)
    base = idx.floor().long()
    base[:, 0].clamp_(0, height - 2)
    base[:, 1].clamp_(0, width - 2)
    h = idx[:, 0] - base[:, 0].float()
    w = idx[:, 1] - base[:, 1].float()
    flat = base[:, 0] * width + base[:, 1]
    payload = torch.cat([values, torch.ones_like(values[:, :1])], -1)
    out = values.new_zeros(height * width, payload.shape[1])
    for offset, weight in ((0, (1 - h) * (1 - w)), (1, (1 - h) * w), (width, h * (1 - w)), (width + 1, h * w)):
        out.index_add_(0, flat + offset, payload * weight[:, None])
    out = out.view(height, width, -1)
    return out[..., :-1], out[..., -1]


def splat_bilinear(uv: Tensor, values: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Centred texel mapping: scatter ``values`` (P,C) at ``uv`` (P,2) into a (size,size) grid, bilinear weights.

    Returns (sums (size,size,C), weights (size,size)); texel (row i, col j) has its centre at
    ``((j + 0.5)/size, (i + 0.5)/size)``. Neighbours falling outside the texture are dropped.
    """
    xy = uv * size - 0.5
    base = torch.floor(xy)
    frac = xy - base
    corner = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]], device=uv.device)  # (4,2) offsets (dx, dy)
    pos = base.long()[:, None, :] + corner  # (P,4,2)
    wxy = torch.where(corner.bool(), frac[:, None, :], 1 - frac[:, None, :])  # (P,4,2)
    w = (wxy[..., 0] * wxy[..., 1]).reshape(-1)
    pos = pos.reshape(-1, 2)
    ok = ((pos >= 0) & (pos < size)).all(-1) & (w > 0)
    idx = pos[ok, 1] * size + pos[ok, 0]
    payload = torch.cat([values.repeat_interleave(4, 0)[ok], torch.ones_like(w[ok, None])], -1) * w[ok, None]
    out = values.new_zeros(size * size, values.shape[1] + 1).index_add_(0, idx, payload)
    return out[:, :-1].view(size, size, -1), out[:, -1].view(size, size)


def _put_level(coords: Tensor, values: Tensor, height: int, width: int, mapping: str) -> tuple[Tensor, Tensor]:
    if mapping == "official":
        return grid_put_linear(coords, values, height, width)
    if height != width:
        raise ValueError("the centred texel mapping needs a square texture")
    return splat_bilinear((coords[:, [1, 0]] + 1) * 0.5, values, height)


# ----------------------------------------------------------------------------- splatting (mip levels)
def grid_put_mipmap(coords: Tensor, values: Tensor, height: int, width: int, min_resolution: int = 32,
                    mapping: str = "official") -> tuple[Tensor, Tensor]:
    """DG ``mipmap_linear_grid_put_2d(..., return_count=True)``: (sums (H,W,C), counts (H,W)).

    ``coords`` (N,2) in [-1,1], (row, column) as for :func:`grid_put_linear` (DG's bake passes
    ``uvs[..., [1, 0]] * 2 - 1``). Levels H, H/2, ... are splatted while ``min(h, w) > min_resolution``; a coarser
    level is upsampled (bilinear, ``align_corners=False``) and added only where the count is still exactly zero.
    Note the official bound: a texture no larger than ``min_resolution`` receives nothing.
    """
    channels = values.shape[1]
    total = values.new_zeros(height, width, channels + 1)
    cur_h, cur_w = height, width
    while min(cur_h, cur_w) > min_resolution:
        hole = total[..., -1] == 0
        if not bool(hole.any()):
            break
        s, c = _put_level(coords, values, cur_h, cur_w, mapping)
        level = torch.cat([s, c[..., None]], -1)
        if (cur_h, cur_w) != (height, width):
            level = F.interpolate(level.permute(2, 0, 1)[None].contiguous(), (height, width), mode="bilinear",
                                  align_corners=False)[0].permute(1, 2, 0)
        total[hole] = total[hole] + level[hole]
        cur_h //= 2
        cur_w //= 2
    return total[..., :-1], total[..., -1]


# ----------------------------------------------------------------------------- inpainting
def inpaint_dilate(texture: np.ndarray, seen: np.ndarray, dilation: int = 32, rim: int = 3) -> np.ndarray:
    """The official fill: texels within ``dilation`` binary dilations (3x3 cross) of ``seen`` copy the nearest texel
    (Euclidean, k-d tree) of the seen region minus its ``rim``-fold erosion (the image border counts as unseen).

    Ties between equidistant rim texels may resolve differently from the official sklearn k-d tree.
    """
    from scipy import ndimage
    from scipy.spatial import cKDTree

    if not seen.any() or dilation <= 0:
        return texture
    target = ndimage.binary_dilation(seen, iterations=int(dilation)) & ~seen
    source = seen & ~ndimage.binary_erosion(seen, iterations=max(1, int(rim)))
    if not target.any() or not source.any():
        return texture
    src = np.argwhere(source)
    tgt = np.argwhere(target)
    _, nearest = cKDTree(src).query(tgt, k=1)
    out = texture.copy()
    out[tgt[:, 0], tgt[:, 1]] = texture[src[nearest, 0], src[nearest, 1]]
    return out


def inpaint_texture(texture: np.ndarray, seen: np.ndarray, dilation: int = 32, rim: int = 3) -> np.ndarray:
    """``inpaint="euclidean"``: unseen texels within Euclidean distance ``dilation`` of the seen region copy the
    nearest texel of the seen region's outer ``rim``-texel band (the image border does not erode it).

    Texels further away are left unchanged.
    """
    from scipy import ndimage

    if not seen.any() or dilation <= 0:
        return texture
    dist = ndimage.distance_transform_edt(~seen)
    target = (~seen) & (dist <= dilation)
    if not target.any():
        return texture
    source = seen & ~ndimage.binary_erosion(seen, iterations=max(1, rim), border_value=1)
    if not source.any():
        source = seen
    _, (ri, ci) = ndimage.distance_transform_edt(~source, return_indices=True)
    out = texture.copy()
    out[target] = texture[ri[target], ci[target]]
    return out


# ----------------------------------------------------------------------------- the bake
def texture_from_views(
    samples: Iterable[tuple[Tensor, Tensor, Tensor]],
    size: int,
    min_resolution: int = 256,
    blend: str = "first",
    texel_mapping: str = "official",
) -> tuple[Tensor, Tensor]:
    """Accumulate per-view samples into (colour (size,size,3), seen (size,size) bool).

    ``samples`` yields, per view in order, ``(uv (N,2) in [0,1] as (u, v), rgb (N,3), viewcos (N,))``. Official
    (``blend="first"``, CG ``save_model`` lines 540-553): each view is splatted with :func:`grid_put_mipmap` at
    coordinates ``uv[:, [1, 0]] * 2 - 1`` and added where the count so far is below 0.1; colour = sum / count.
    ``blend="best"``: a texel takes the single view with the highest mean view cosine among those that reach it.
    """
    device = None
    total = best = None
    for uv, rgb, viewcos in samples:
        if total is None:
            device = rgb.device
            total = torch.zeros(size, size, 4 + (blend == "best"), device=device)  # r, g, b, (cos), count
            best = torch.full((size, size), -2.0, device=device)
        if uv.shape[0] == 0:
            continue
        vals = torch.cat([rgb, viewcos[:, None]], -1) if blend == "best" else rgb
        s, c = grid_put_mipmap(uv[:, [1, 0]] * 2 - 1, vals, size, size, min_resolution, texel_mapping)
        view = torch.cat([s, c[..., None]], -1)
        if blend == "first":
            take = total[..., -1] < _WRITTEN
            total = torch.where(take[..., None], total + view, total)
        else:
            mean_cos = s[..., 3] / c.clamp_min(1e-12)
            take = (c > 0) & (mean_cos > best)
            total = torch.where(take[..., None], view, total)
            best = torch.where(take, mean_cos, best)
    if total is None:
        return torch.zeros(size, size, 3), torch.zeros(size, size, dtype=torch.bool)
    count = total[..., -1]
    seen = count > 0
    colour = torch.where(seen[..., None], total[..., :3] / torch.where(seen, count, 1.0)[..., None], 0.0)
    return colour, seen


def bake_texture(
    mesh: Mesh,
    render_rgb: Callable[[Camera], Tensor],
    rasterizer: MeshRasterizer,
    texture_size: int = 1024,
    render_size: int = 512,
    views: Sequence[tuple[float, float]] | None = None,
    radius: float = 2.0,
    fovy_deg: float = 49.1,
    view_cos_threshold: float = 0.5,
    inpaint_dilation: int = 32,
    inpaint_rim: int = 3,
    blend: str = "first",
    min_resolution: int = 256,
    texel_mapping: str = "official",
    inpaint: str = "dilate",
) -> Mesh:
    """Copy of ``mesh`` (which must have UVs) with an albedo (texture_size, texture_size, 3) baked from ``render_rgb``.

    ``render_rgb(camera)`` returns the reference colour (3,H,W) in [0,1] for an orbit camera of ``render_size``
    pixels (e.g. the Gaussian render over white). ``views`` are (elevation, azimuth) in degrees. ``blend``,
    ``texel_mapping`` and ``inpaint`` choose between the official behaviour and the alternatives (module
    docstring); ``min_resolution`` bounds the mip levels (official: 256 for a 1024 texture).
    """
    if mesh.vt is None:
        raise CGError("bake_texture: the mesh has no UVs; run cg_lightning.mesh.uv.unwrap_uv first")
    for key, value, allowed in (("bake_blend", blend, BLEND_MODES), ("bake_texel_mapping", texel_mapping,
                                TEXEL_MAPPINGS), ("inpaint", inpaint, INPAINT_MODES)):
        if value not in allowed:
            raise ConfigError(f"mesh.{key}={value!r}; expected one of {allowed}")
    if texture_size <= min_resolution:
        raise ConfigError(f"mesh.texture_size={texture_size} must be larger than mesh.bake_min_resolution="
                          f"{min_resolution} (the official mip splat writes no level otherwise)")
    views = list(default_bake_views() if views is None else views)
    device = mesh.v.device
    vn = mesh.vn if mesh.vn is not None else mesh.auto_normals().vn
    tri = mesh.f.to(torch.int32)
    v_h = F.pad(mesh.v.float(), (0, 1), value=1.0)
    attrs = torch.cat([mesh.vt.float(), vn.float()], -1)

    def samples():
        for elev, azim in views:
            cam = orbit(elev, azim, radius, fovy_deg, render_size, render_size).to(device)
            rgb = render_rgb(cam).detach().to(device=device, dtype=torch.float32)
            if rgb.ndim == 4:
                rgb = rgb[0]
            if tuple(rgb.shape[-2:]) != (render_size, render_size):
                rgb = F.interpolate(rgb[None], size=(render_size, render_size), mode="bilinear",
                                    align_corners=False)[0]
            pos = (v_h @ cam.mvp_gl.T)[None]
            rast = rasterizer.rasterize(pos, tri, (render_size, render_size))
            inter = rasterizer.interpolate(attrs, rast, tri)[0]
            normal = normalize_or_default(inter[..., 2:5].reshape(-1, 3)).reshape(inter.shape[:2] + (3,))
            viewcos = (normal * cam.c2w[:3, 2]).sum(-1)
            mask = (rast[0, ..., 3] > 0) & (viewcos > view_cos_threshold)
            yield inter[..., :2][mask].clamp(0.0, 1.0), rgb.permute(1, 2, 0)[mask], viewcos[mask]

    with torch.no_grad():
        colour, seen = texture_from_views(samples(), texture_size, min_resolution, blend, texel_mapping)
    if not bool(seen.any()):
        raise CGError("bake_texture: no texel was seen from any view (is the mesh inside the cameras' field of view?)")
    fill = inpaint_dilate if inpaint == "dilate" else inpaint_texture
    filled = fill(colour.cpu().numpy(), seen.cpu().numpy(), inpaint_dilation, inpaint_rim)
    albedo = torch.from_numpy(filled).to(device).clamp_(0.0, 1.0)
    return replace(mesh, vn=vn, albedo=albedo)
