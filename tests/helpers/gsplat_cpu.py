"""CPU stand-ins for the CUDA-only pieces of gsplat 1.5.3, so gsplat's own PyTorch reference runs on a CPU.

gsplat's reference path (``gsplat/rendering.py _rasterization`` with ``gsplat/cuda/_torch_impl.py``) is plain
PyTorch except for three pieces: tile intersection (``isect_tiles``; its ``_isect_tiles`` twin is a Python loop
over Gaussians), ``rasterize_to_indices_in_range`` (a CUDA kernel) and nerfacc's segmented scans used by
``accumulate``. This module re-implements those from the kernels' source
(``csrc/IntersectTile.cu``, ``csrc/RasterizeToIndices3DGS.cu``) with vectorised PyTorch:

* :func:`isect_tiles` / :func:`isect_offset_encode`: bit-identical ids, order and offsets;
* :func:`rasterize_to_indices_in_range`: the per-pixel front-to-back walk of the kernel (same skip rule
  ``sigma < 0 or alpha < 1/255``, same ``next_T <= 1e-4`` stop, transmittance multiplied in the same float32
  order); only ``__expf`` is replaced by ``torch.exp``;
* :data:`NERFACC`: ``render_weight_from_alpha`` / ``accumulate_along_rays`` (exclusive product per ray).

:func:`cpu_kernels` returns an object with the five functions the gsplat adapter calls, wired to gsplat's
reference maths; :func:`patch_gsplat_reference` installs the stand-ins where gsplat's reference imports them.
"""

from __future__ import annotations

import math
import sys
import types

import torch
from torch import Tensor

from cg_lightning.render.gaussian.gsplat_backend import radius_3dgs

ALPHA_THRESHOLD = 1.0 / 255.0


def _tile_bits(n_tiles: int) -> int:
    """``floor(log2(n)) + 1`` as the CUDA launcher computes it."""
    return int(n_tiles).bit_length()


@torch.no_grad()
def isect_tiles(
    means2d: Tensor,
    radii: Tensor,
    depths: Tensor,
    tile_size: int,
    tile_width: int,
    tile_height: int,
    sort: bool = True,
    segmented: bool = False,
    packed: bool = False,
    n_images: int | None = None,
    image_ids: Tensor | None = None,
    gaussian_ids: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Vectorised ``intersect_tile_kernel`` (unpacked): (tiles_per_gauss int32, isect_ids int64, flatten_ids
    int32), ids ``image | tile | depth bits`` sorted like cub's (stable) radix sort."""
    if packed:
        raise NotImplementedError("the CPU stand-in implements gsplat's unpacked layout only")
    image_dims = means2d.shape[:-2]
    n = means2d.shape[-2]
    m = means2d.reshape(-1, 2).float()
    r = radii.reshape(-1, 2)
    d = depths.reshape(-1).float().contiguous()
    ts = torch.tensor(float(tile_size), dtype=torch.float32)
    # float32 as in the kernel: tile_x - tile_radius_x, floor/ceil, saturating cast to uint32, min with size
    rad = r.float() / ts
    tile_xy = m / ts
    lo = torch.floor(tile_xy - rad)
    hi = torch.ceil(tile_xy + rad)
    limit = torch.tensor([tile_width, tile_height], dtype=torch.float32)
    lo = torch.minimum(lo.clamp_min(0.0), limit).long()
    hi = torch.minimum(hi.clamp_min(0.0), limit).long()
    valid = (r > 0).all(dim=-1)
    span = torch.where(valid[:, None], hi - lo, torch.zeros_like(hi))
    counts = span[:, 0] * span[:, 1]
    flat = torch.repeat_interleave(torch.arange(m.shape[0]), counts)
    local = torch.arange(flat.numel()) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    w = span[flat, 0]
    row = torch.div(local, w.clamp_min(1), rounding_mode="floor")
    tx = lo[flat, 0] + local - row * w
    ty = lo[flat, 1] + row
    tile_id = ty * tile_width + tx
    tile_bits = _tile_bits(tile_width * tile_height)
    image_id = torch.div(flat, n, rounding_mode="floor")
    depth_bits = d.view(torch.int32).long()[flat] & 0xFFFFFFFF
    isect_ids = (image_id << (32 + tile_bits)) | (tile_id << 32) | depth_bits
    flatten_ids = flat.to(torch.int32)
    if sort:
        isect_ids, order = torch.sort(isect_ids, stable=True)
        flatten_ids = flatten_ids[order]
    return counts.to(torch.int32).reshape(image_dims + (n,)), isect_ids, flatten_ids


@torch.no_grad()
def isect_offset_encode(isect_ids: Tensor, n_images: int, tile_width: int, tile_height: int) -> Tensor:
    """``intersect_offset_kernel``: index of each (image, tile)'s first intersection (int32 [I, th, tw])."""
    n_tiles = tile_width * tile_height
    bits = _tile_bits(n_tiles)
    key = isect_ids >> 32
    ids = (key >> bits) * n_tiles + (key & ((1 << bits) - 1))
    offsets = torch.searchsorted(ids, torch.arange(n_images * n_tiles, dtype=ids.dtype), side="left")
    return offsets.to(torch.int32).reshape(n_images, tile_height, tile_width)


@torch.no_grad()
def rasterize_to_indices_in_range(
    range_start: int,
    range_end: int,
    transmittances: Tensor,
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    image_width: int,
    image_height: int,
    tile_size: int,
    isect_offsets: Tensor,
    flatten_ids: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """``rasterize_to_indices_3dgs_kernel``: (gaussian ids, pixel ids, image ids) of the (pixel, Gaussian) pairs
    that contribute, visiting each tile's batches ``[range_start, range_end)`` of ``tile_size**2`` Gaussians.

    Output order is the kernel's: by global pixel index, front to back within a pixel.
    """
    n = means2d.shape[-2]
    n_img = math.prod(means2d.shape[:-2])
    th, tw = isect_offsets.shape[-2:]
    n_isects = flatten_ids.numel()
    block = tile_size * tile_size
    starts = isect_offsets.reshape(-1).long()
    ends = torch.cat([starts[1:], starts.new_tensor([n_isects])])
    lo = torch.minimum(starts + range_start * block, ends)
    hi = torch.minimum(starts + range_end * block, ends)
    counts = hi - lo  # candidates per (image, tile)
    empty = (torch.empty(0, dtype=torch.int64),) * 3
    if int(counts.sum()) == 0:
        return empty
    length = int(counts.max())
    slot = torch.arange(length)
    cand = lo[:, None] + slot[None, :]  # (tiles, L) positions in flatten_ids
    cand_ok = slot[None, :] < counts[:, None]
    g = flatten_ids.long()[cand.clamp_max(max(n_isects - 1, 0))]  # flat index in [I * N]
    tile_img = torch.div(torch.arange(starts.numel()), th * tw, rounding_mode="floor")
    tile_in_img = torch.arange(starts.numel()) % (th * tw)
    ty, tx = torch.div(tile_in_img, tw, rounding_mode="floor"), tile_in_img % tw
    py, px = torch.meshgrid(torch.arange(tile_size), torch.arange(tile_size), indexing="ij")
    row = ty[:, None] * tile_size + py.reshape(1, -1)  # (tiles, P)
    col = tx[:, None] * tile_size + px.reshape(1, -1)
    inside = (row < image_height) & (col < image_width)
    pix_id = row * image_width + col
    m2 = means2d.reshape(-1, 2).float()
    con = conics.reshape(-1, 3).float()
    opa = opacities.reshape(-1).float()
    mx, my = m2[g, 0][:, None, :], m2[g, 1][:, None, :]  # (tiles, 1, L)
    dx = mx - (col.float() + 0.5)[..., None]
    dy = my - (row.float() + 0.5)[..., None]
    c = con[g][:, None, :, :]
    sigma = 0.5 * (c[..., 0] * dx * dx + c[..., 2] * dy * dy) + c[..., 1] * dx * dy
    alpha = torch.clamp_max(opa[g][:, None, :] * torch.exp(-sigma), 0.999)
    take = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD) & cand_ok[:, None, :] & inside[..., None]
    trans0 = transmittances.reshape(n_img, -1)[
        tile_img[:, None], pix_id.clamp_max(image_width * image_height - 1)
    ]
    factors = torch.where(take, 1.0 - alpha, torch.ones_like(alpha))
    running = torch.cumprod(torch.cat([trans0[..., None], factors], dim=-1), dim=-1)[..., 1:]  # next_T
    stopped = torch.cumsum((take & (running <= 1e-4)).int(), dim=-1) > 0
    keep = take & ~stopped
    t_idx, p_idx, s_idx = torch.nonzero(keep, as_tuple=True)
    global_pix = tile_img[t_idx] * (image_width * image_height) + pix_id[t_idx, p_idx]
    order = torch.argsort(global_pix * (length + 1) + s_idx, stable=True)
    gauss = g.reshape(starts.numel(), length)[t_idx, s_idx][order] % n
    global_pix = global_pix[order]
    hw = image_width * image_height
    return gauss, global_pix % hw, torch.div(global_pix, hw, rounding_mode="floor")


def render_weight_from_alpha(alphas: Tensor, ray_indices: Tensor, n_rays: int) -> tuple[Tensor, Tensor]:
    """nerfacc's packed version: ``T_i = prod_{j<i} (1 - a_j)`` within each ray (samples grouped by ray, in
    order), ``w_i = a_i T_i``. Differentiable (dense per-ray cumprod)."""
    if alphas.numel() == 0:
        return alphas.clone(), alphas.clone()
    starts = torch.searchsorted(ray_indices, ray_indices, side="left")
    pos = torch.arange(ray_indices.numel()) - starts
    rays, inv = torch.unique_consecutive(ray_indices, return_inverse=True)
    dense = alphas.new_zeros(rays.numel(), int(pos.max()) + 1).index_put((inv, pos), alphas)
    shifted = torch.cat([dense.new_ones(rays.numel(), 1), 1.0 - dense[:, :-1]], dim=1)
    trans = torch.cumprod(shifted, dim=1)[inv, pos]
    return alphas * trans, trans


def accumulate_along_rays(weights: Tensor, values: Tensor | None, ray_indices: Tensor, n_rays: int) -> Tensor:
    """nerfacc: ``out[r] = sum_{i in ray r} w_i v_i`` ((n_rays, D); D = 1 when ``values`` is None)."""
    src = weights[:, None] if values is None else weights[:, None] * values
    return src.new_zeros(n_rays, src.shape[-1]).index_add(0, ray_indices, src)


NERFACC = types.ModuleType("nerfacc")
NERFACC.render_weight_from_alpha = render_weight_from_alpha
NERFACC.accumulate_along_rays = accumulate_along_rays


def patch_gsplat_reference(monkeypatch) -> None:
    """Install the stand-ins where gsplat's PyTorch reference looks them up (pytest ``monkeypatch``)."""
    import gsplat.cuda._wrapper as wrapper

    monkeypatch.setitem(sys.modules, "nerfacc", NERFACC)
    monkeypatch.setattr(wrapper, "rasterize_to_indices_in_range", rasterize_to_indices_in_range)


def cpu_kernels() -> types.SimpleNamespace:
    """The five gsplat functions the adapter calls, on gsplat's PyTorch reference plus the stand-ins (call
    :func:`patch_gsplat_reference` first)."""
    from gsplat.cuda import _torch_impl as ref

    def fully_fused_projection(
        means,
        covars,
        quats,
        scales,
        viewmats,
        ks,
        width,
        height,
        eps2d=0.3,
        near_plane=0.01,
        far_plane=1e10,
        packed=False,
        **_,
    ):
        if packed:
            raise NotImplementedError("packed projection is not used by the adapter")
        if covars is None:
            covars, _ = ref._quat_scale_to_covar_preci(quats, scales, True, False, triu=False)
        return ref._fully_fused_projection(
            means,
            covars,
            viewmats,
            ks,
            width,
            height,
            eps2d=eps2d,
            near_plane=near_plane,
            far_plane=far_plane,
        )

    def spherical_harmonics(degree, dirs, coeffs, masks=None):
        out = ref._spherical_harmonics(degree, dirs, coeffs)
        return out if masks is None else torch.where(masks[..., None], out, torch.zeros_like(out))

    return types.SimpleNamespace(
        fully_fused_projection=fully_fused_projection,
        spherical_harmonics=spherical_harmonics,
        isect_tiles=isect_tiles,
        isect_offset_encode=isect_offset_encode,
        rasterize_to_pixels=ref._rasterize_to_pixels,
    )


@torch.no_grad()
def isect_tiles_3dgs(
    means2d: Tensor, radii: Tensor, depths: Tensor, tile_size: int, tile_width: int, tile_height: int, **_
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`isect_tiles` with 3DGS' ``getRect`` (pixel frame with centres at integers, exclusive max
    ``(p + r + tile - 1) / tile`` truncated) in place of gsplat's floor/ceil box."""
    r = radii[..., 0].float()
    p = means2d.float() - 0.5
    lo_x = torch.floor((p[..., 0] - r) / tile_size).clamp(0, tile_width)
    lo_y = torch.floor((p[..., 1] - r) / tile_size).clamp(0, tile_height)
    hi_x = torch.floor((p[..., 0] + r + tile_size - 1) / tile_size).clamp(0, tile_width)
    hi_y = torch.floor((p[..., 1] + r + tile_size - 1) / tile_size).clamp(0, tile_height)
    # Express the rectangle as a gsplat (centre, radius) box that floor/ceil map back to the same tiles.
    lo = torch.stack([lo_x, lo_y], dim=-1)
    hi = torch.stack([hi_x, hi_y], dim=-1)
    ok = (radii > 0).all(dim=-1, keepdim=True) & (hi > lo).all(dim=-1, keepdim=True)
    centre = 0.5 * (lo + hi) * tile_size
    half = (0.5 * (hi - lo) * tile_size).round().int()
    return isect_tiles(
        centre, torch.where(ok, half, torch.zeros_like(half)), depths, tile_size, tile_width, tile_height
    )


def aligned_kernels() -> types.SimpleNamespace:
    """:func:`cpu_kernels` with 3DGS' coverage rule (3 sigma of the major axis, ``getRect`` tiles) in place of
    gsplat's per-axis 3.33 sigma box: what is left between the backends is gsplat's alpha clamp (0.999)."""
    base = cpu_kernels()
    project = base.fully_fused_projection

    def fully_fused_projection(*args, near_plane=0.01, far_plane=1e10, **kwargs):
        radii, means2d, depths, conics, comp = project(
            *args, near_plane=near_plane, far_plane=far_plane, **kwargs
        )
        r = radius_3dgs(conics).nan_to_num(0.0).int()
        valid = (depths > near_plane) & (depths < far_plane)  # 3DGS culls off-screen ones by rect only
        r = torch.where(valid, r, torch.zeros_like(r))
        return torch.stack([r, r], dim=-1), means2d, depths, conics, comp

    base.fully_fused_projection = fully_fused_projection
    base.isect_tiles = isect_tiles_3dgs
    return base
