"""Pure-PyTorch mesh rasterizer with nvdiffrast's semantics (CPU or any device, no compiled code).

Visibility (not differentiable, like nvdiffrast): every triangle proposes the pixels of its screen bounding box;
candidates inside the triangle and inside the depth range are reduced per pixel with ``scatter_reduce("amin")`` over
int64 keys ``depth30 << 32 | face``, i.e. a z-buffer with a deterministic tie-break (lower face id wins).

Coverage and barycentrics use 2D homogeneous edge functions (Olano & Greer): with ``c_i = (x_i, y_i, w_i)`` the
clip positions of the corners and ``p = (px, py, 1)`` the pixel's NDC position, ``e_i = (c_j x c_k) . p`` and
``b_i = e_i / sum(e)`` are the *perspective-correct* barycentrics; the pixel is covered when all ``b_i >= 0`` and
the hit lies in front of the camera (``w = det / sum(e) > 0``). No clipping is needed, triangles crossing the camera
plane are handled exactly. After visibility, the barycentrics and ``z/w`` of the winning triangle are recomputed
from ``pos_clip`` with autograd on, so gradients reach the vertices (and, through ``interpolate``/``texture``, the
attributes and textures).

``antialias`` follows nvdiffrast's idea: for each pair of horizontally/vertically adjacent pixels covered by different
triangles, the edge of the front triangle that separates them is located analytically (a differentiable zero of an
edge function) and the pixel it falls into is blended by its coverage. Edges shared by both triangles (interior
edges, same vertex indices) are skipped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cg_lightning.errors import CGError
from cg_lightning.render.mesh.base import check_filter_args, estimate_uv_da, mip_level_from_uv_da

_EMPTY = torch.iinfo(torch.int64).max
_DEPTH_BITS = 30
_W_EPS = 1e-8


def _check_inputs(pos_clip: Tensor, tri: Tensor) -> tuple[Tensor, Tensor]:
    if pos_clip.ndim != 3 or pos_clip.shape[-1] != 4:
        raise CGError(f"pos_clip must be (B,V,4), got {tuple(pos_clip.shape)}")
    if tri.ndim != 2 or tri.shape[-1] != 3:
        raise CGError(f"tri must be (F,3), got {tuple(tri.shape)}")
    if not pos_clip.is_floating_point():
        raise CGError("pos_clip must be a floating point tensor")
    return pos_clip, tri.to(device=pos_clip.device, dtype=torch.long)


def _edge_coefficients(corners: Tensor) -> Tensor:
    """(...,3,4) clip corners -> (...,3,3) rows ``c_j x c_k`` over (x, y, w) so that ``e_i = row_i . (px,py,1)``."""
    x, y, w = corners[..., 0], corners[..., 1], corners[..., 3]  # (...,3) each, indexed by corner
    j, k = [1, 2, 0], [2, 0, 1]  # row i = c_j x c_k, written out (torch.cross is slow on small last dims)
    xj, yj, wj, xk, yk, wk = x[..., j], y[..., j], w[..., j], x[..., k], y[..., k], w[..., k]
    return torch.stack([yj * wk - wj * yk, wj * xk - xj * wk, xj * yk - yj * xk], -1)


def _edge_values(coef: Tensor, px: Tensor, py: Tensor) -> Tensor:
    """Evaluate the three edge functions (...,3) at NDC points ``px, py`` (...)."""
    return coef[..., 0] * px[..., None] + coef[..., 1] * py[..., None] + coef[..., 2]


def _pixel_ndc(index: Tensor, size: int, dtype: torch.dtype) -> Tensor:
    return (2 * index.to(dtype) + 1) / size - 1


class TorchMeshRasterizer:
    """nvdiffrast-compatible rasterize / interpolate / texture / antialias in plain PyTorch.

    ``max_candidates`` bounds the number of (triangle, pixel) candidates evaluated at once (memory knob).
    """

    name = "torch"

    def __init__(self, max_candidates: int = 1 << 22) -> None:
        self.max_candidates = int(max_candidates)

    # ------------------------------------------------------------------ rasterize
    def rasterize(self, pos_clip: Tensor, tri: Tensor, resolution: tuple[int, int], *,
                  with_db: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        pos, tri = _check_inputs(pos_clip, tri)
        h, w = int(resolution[0]), int(resolution[1])
        b = pos.shape[0]
        with torch.no_grad():
            keys = self._zbuffer(pos.detach(), tri, h, w)
        pix = (keys != _EMPTY).nonzero().squeeze(1)
        face = keys[pix] & 0xFFFFFFFF
        bi, rem = pix // (h * w), pix % (h * w)
        px = _pixel_ndc(rem % w, w, pos.dtype)
        py = _pixel_ndc(rem // w, h, pos.dtype)
        corners = pos[bi[:, None], tri[face]]  # (N,3,4), differentiable
        coef = _edge_coefficients(corners)
        e = _edge_values(coef, px, py)
        e_sum = e.sum(-1, keepdim=True)
        bary = e / e_sum
        zw = (e * corners[..., 2]).sum(-1) / (e * corners[..., 3]).sum(-1)
        vals = torch.stack([bary[:, 0], bary[:, 1], zw, (face + 1).to(pos.dtype)], -1)
        rast = pos.new_zeros(b * h * w, 4).index_put((pix,), vals).view(b, h, w, 4)
        if not with_db:
            return rast
        # b_i = e_i / sum(e) with e_i linear in (px, py): db_i/dpx = (A_i - b_i sum(A)) / sum(e), and one pixel step
        # is 2/W in px (2/H in py). This is the quotient rule nvdiffrast's rasterizer evaluates per pixel.
        da_dx, da_dy = coef[..., 0], coef[..., 1]  # (N,3) edge-function slopes
        db_dx = (da_dx[:, :2] - bary[:, :2] * da_dx.sum(-1, keepdim=True)) / e_sum * (2.0 / w)
        db_dy = (da_dy[:, :2] - bary[:, :2] * da_dy.sum(-1, keepdim=True)) / e_sum * (2.0 / h)
        db = torch.stack([db_dx[:, 0], db_dy[:, 0], db_dx[:, 1], db_dy[:, 1]], -1)
        rast_db = pos.new_zeros(b * h * w, 4).index_put((pix,), db).view(b, h, w, 4)
        return rast, rast_db

    def _zbuffer(self, pos: Tensor, tri: Tensor, h: int, w: int) -> Tensor:
        """Packed (depth, face) key of the nearest covering triangle per pixel, flat (B*H*W,); _EMPTY = none.

        Candidates are generated per (triangle, row) span: the interval of the row where the three edge functions
        are non-negative, widened by one pixel on each side; the exact inside test then runs on the edge functions
        themselves, whose coefficients are exact negatives for the two faces of a shared edge, so a pixel on an
        edge is never lost by both (watertight).
        """
        b, f = pos.shape[0], tri.shape[0]
        keys = torch.full((b * h * w,), _EMPTY, dtype=torch.long, device=pos.device)
        if f == 0:
            return keys
        corners = pos[:, tri].flatten(0, 1)  # (T,3,4), T = B*F
        cw = corners[..., 3]
        all_front = (cw > _W_EPS).all(-1)
        any_front = (cw > 0).any(-1)
        coef = _edge_coefficients(corners)  # (T,3 edges,3 [A,B,C])
        det = (coef[:, 0] * corners[:, 0, [0, 1, 3]]).sum(-1)
        sign = torch.sign(det)
        ndc = corners[..., :2] / torch.where(all_front[..., None], cw, torch.ones_like(cw))[..., None]
        col = (ndc[..., 0] + 1) * (w / 2) - 0.5
        row = (ndc[..., 1] + 1) * (h / 2) - 0.5
        x0 = torch.ceil(_min3(col)).clamp(0, w).long()
        x1 = torch.floor(_max3(col)).clamp(-1, w - 1).long()
        y0 = torch.ceil(_min3(row)).clamp(0, h).long()
        y1 = torch.floor(_max3(row)).clamp(-1, h - 1).long()
        # a triangle crossing the camera plane has an unbounded projection: its box is the whole screen
        crossing = any_front & ~all_front
        x0, y0 = torch.where(crossing, 0, x0), torch.where(crossing, 0, y0)
        x1, y1 = torch.where(crossing, w - 1, x1), torch.where(crossing, h - 1, y1)
        live = any_front & (sign != 0) & (x1 >= x0) & (y1 >= y0)
        tris = live.nonzero().squeeze(1)
        if tris.numel() == 0:
            return keys
        nrows = (y1 - y0 + 1)[tris]
        seg_tri = torch.repeat_interleave(tris, nrows)
        seg_first = torch.cumsum(nrows, 0) - nrows
        seg_row = y0[seg_tri] + torch.arange(seg_tri.numel(), device=pos.device) - torch.repeat_interleave(seg_first, nrows)
        dtype = coef.dtype
        py = _pixel_ndc(seg_row, h, dtype)
        sg = sign[seg_tri, None]
        c = coef[seg_tri]  # (S,3,3)
        a_coef = c[..., 0] * sg  # e'_i(px) = a_i px + k_i on this row, e' = sign(det) e
        k_coef = (c[..., 1] * py[:, None] + c[..., 2]) * sg
        with torch.no_grad():
            bound = -k_coef / torch.where(a_coef == 0, torch.ones_like(a_coef), a_coef)
            inf = torch.full_like(bound, float("inf"))
            lo = _max3(torch.where(a_coef > 0, bound, -inf))
            hi = _min3(torch.where(a_coef < 0, bound, inf))
            dead = ((a_coef == 0) & (k_coef < 0)).any(-1)
            c_lo = (torch.ceil(((lo + 1) * (w / 2) - 0.5).clamp(-2, w + 1)) - 1).long()
            c_hi = (torch.floor(((hi + 1) * (w / 2) - 0.5).clamp(-2, w + 1)) + 1).long()
            c_lo = torch.maximum(c_lo, x0[seg_tri])
            c_hi = torch.minimum(c_hi, x1[seg_tri])
            count = torch.where(dead, 0, (c_hi - c_lo + 1).clamp_min(0))
        # z/w of the hit is num/den with num = sum e'_i z_i, den = sum e'_i w_i: both linear in px on a row
        zc, wc = corners[seg_tri, :, 2], corners[seg_tri, :, 3]
        seg_data = torch.cat([a_coef, k_coef, (a_coef * zc).sum(-1, keepdim=True), (k_coef * zc).sum(-1, keepdim=True),
                              (a_coef * wc).sum(-1, keepdim=True), (k_coef * wc).sum(-1, keepdim=True)], -1)
        ends = torch.cumsum(count, 0)
        col_shift = c_lo - (ends - count)  # column = candidate number + col_shift[segment]
        seg_pix = (seg_tri // f * h + seg_row) * w  # flat index of the row start
        total = int(ends[-1])
        n_seg = count.numel()
        start = 0
        while start < n_seg and total > 0:
            base = int(ends[start - 1]) if start > 0 else 0
            stop = max(int(torch.searchsorted(ends, base + self.max_candidates, right=True)), start + 1)
            sl = slice(start, stop)
            self._scatter_chunk(keys, count[sl], col_shift[sl] + base, seg_pix[sl], seg_tri[sl] % f, seg_data[sl], w,
                                base)
            start = stop
        return keys

    @staticmethod
    def _scatter_chunk(keys: Tensor, count: Tensor, col_shift: Tensor, seg_pix: Tensor, seg_face: Tensor,
                       seg_data: Tensor, w: int, base: int) -> None:
        n = int(count.sum())
        if n == 0:
            return
        seg = torch.repeat_interleave(torch.arange(count.numel(), device=keys.device), count)
        cols = torch.arange(n, device=keys.device) + col_shift.index_select(0, seg) - base
        px = _pixel_ndc(cols, w, seg_data.dtype).unsqueeze(1)
        g = seg_data.index_select(0, seg)  # (N,10)
        e = g[:, 0:3] * px + g[:, 3:6]
        num = g[:, 6:7] * px + g[:, 7:8]
        den = g[:, 8:9] * px + g[:, 9:10]
        ok = (_min3(e).unsqueeze(1) >= 0) & (den > 0) & (num >= -den) & (num <= den)
        hit = ok.squeeze(1).nonzero().squeeze(1)
        if hit.numel() == 0:
            return
        z = (num[hit] / den[hit]).squeeze(1)
        seg = seg[hit]
        depth = ((z.double() + 1) * 0.5 * ((1 << _DEPTH_BITS) - 1)).long().clamp(0, (1 << _DEPTH_BITS) - 1)
        key = (depth << 32) | seg_face.index_select(0, seg)
        idx = seg_pix.index_select(0, seg) + cols[hit]
        keys.scatter_reduce_(0, idx, key, reduce="amin")

    # ------------------------------------------------------------------ interpolate
    def interpolate(self, attr: Tensor, rast: Tensor, tri: Tensor, *,
                    rast_db: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        b, h, w, _ = rast.shape
        if attr.ndim == 2:
            attr = attr.unsqueeze(0)
        if attr.ndim != 3 or attr.shape[0] not in (1, b):
            raise CGError(f"attr must be (V,C) or (B,V,C) with B={b}, got {tuple(attr.shape)}")
        if rast_db is not None and tuple(rast_db.shape) != tuple(rast.shape):
            raise CGError(f"rast_db must have the shape of rast {tuple(rast.shape)}, got {tuple(rast_db.shape)}")
        tri = tri.to(device=rast.device, dtype=torch.long)
        nv, nc = attr.shape[1], attr.shape[2]
        flat = rast.reshape(-1, 4)
        pix = (flat[:, 3] > 0).nonzero().squeeze(1)  # work on covered pixels only
        sel = flat[pix]
        corner = tri[sel[:, 3].long() - 1]  # (N,3)
        if attr.shape[0] == b and b > 1:
            corner = corner + (pix // (h * w) * nv)[:, None]
        values = attr.reshape(-1, nc)[corner]  # (N,3,C)
        u, v = sel[:, 0:1].to(values.dtype), sel[:, 1:2].to(values.dtype)
        vals = values[:, 0] * u + values[:, 1] * v + values[:, 2] * (1 - u - v)
        out = values.new_zeros(b * h * w, nc).index_put((pix,), vals).view(b, h, w, nc)
        if rast_db is None:
            return out
        # d attr = (a0 - a2) du + (a1 - a2) dv, per screen axis; layout (d/dX, d/dY) per attribute, like nvdiffrast
        db = rast_db.reshape(-1, 4)[pix].to(values.dtype)  # (N,4) du/dX, du/dY, dv/dX, dv/dY
        d_u, d_v = values[:, 0] - values[:, 2], values[:, 1] - values[:, 2]  # (N,C)
        dx = d_u * db[:, 0:1] + d_v * db[:, 2:3]
        dy = d_u * db[:, 1:2] + d_v * db[:, 3:4]
        da = torch.stack([dx, dy], -1).reshape(-1, 2 * nc)
        out_da = values.new_zeros(b * h * w, 2 * nc).index_put((pix,), da).view(b, h, w, 2 * nc)
        return out, out_da

    # ------------------------------------------------------------------ texture
    def texture(self, tex: Tensor, uv: Tensor, filter_mode: str = "linear", uv_da: Tensor | None = None,
                mip_level_bias: Tensor | None = None, max_mip_level: int | None = None,
                boundary_mode: str = "wrap") -> Tensor:
        check_filter_args(filter_mode, boundary_mode)
        if tex.ndim != 4 or uv.ndim != 4 or uv.shape[-1] != 2:
            raise CGError(f"texture expects tex (B,Ht,Wt,C) and uv (B,H,W,2), got {tuple(tex.shape)}, {tuple(uv.shape)}")
        if tex.shape[0] not in (1, uv.shape[0]):
            raise CGError(f"texture batch {tex.shape[0]} does not match uv batch {uv.shape[0]}")
        tex_nchw = tex.permute(0, 3, 1, 2)
        if tex_nchw.shape[0] == 1 and uv.shape[0] > 1:
            tex_nchw = tex_nchw.expand(uv.shape[0], -1, -1, -1)
        if filter_mode == "linear" or uv.numel() == 0:  # empty uv (no covered pixel): no mip level to choose
            return _bilinear(tex_nchw, uv, boundary_mode)
        levels = mip_pyramid(tex_nchw, max_mip_level)
        if uv_da is None:
            uv_da = estimate_uv_da(uv)
        lam = mip_level_from_uv_da(uv_da.detach(), (tex.shape[1], tex.shape[2]))
        if mip_level_bias is not None:
            lam = lam + mip_level_bias.detach()
        lam = lam.clamp(0, len(levels) - 1)
        lo, hi = int(torch.floor(lam.min())), int(torch.ceil(lam.max()))
        out = None
        for level in range(lo, hi + 1):
            weight = (1 - (lam - level).abs()).clamp_min(0).unsqueeze(-1)
            if not bool((weight > 0).any()) and hi > lo:
                continue
            term = _bilinear(levels[level], uv, boundary_mode) * weight.to(tex.dtype)
            out = term if out is None else out + term
        return out

    # ------------------------------------------------------------------ antialias
    def antialias(self, color: Tensor, rast: Tensor, pos_clip: Tensor, tri: Tensor) -> Tensor:
        pos, tri = _check_inputs(pos_clip, tri)
        b, h, w, c = color.shape
        flat = color.reshape(-1, c)
        delta = torch.zeros_like(flat)
        face = rast[..., 3].long().reshape(-1)
        depth = rast[..., 2].detach().reshape(-1)
        silhouette = _silhouette_edges(pos.detach(), tri)  # (B,F,3): edge opposite corner i is a silhouette
        face_img = face.view(b, h, w)
        # neighbour pairs (p, p + step) whose faces differ, found on shifted views of the face image (no gather over
        # all pixel pairs), in row-major order of p
        for differs, step in ((face_img[:, :, :-1] != face_img[:, :, 1:], 1),    # horizontal neighbours
                              (face_img[:, :-1, :] != face_img[:, 1:, :], w)):   # vertical neighbours
            bi_, y_, x_ = differs.nonzero(as_tuple=True)
            if bi_.numel() == 0:
                continue
            p = (bi_ * h + y_) * w + x_
            q = p + step
            fp, fq = face[p], face[q]
            p_front = (fp > 0) & ((fq == 0) | (depth[p] < depth[q]))
            front = torch.where(p_front, p, q)
            back = torch.where(p_front, q, p)
            ff = face[front] - 1
            bi = front // (h * w)
            coef = _edge_coefficients(pos[bi[:, None], tri[ff]])
            e_front = _edge_values(coef, *_flat_pixel_ndc(front, h, w, pos.dtype))
            e_back = _edge_values(coef, *_flat_pixel_ndc(back, h, w, pos.dtype))
            sign = torch.sign(e_front.detach().sum(-1, keepdim=True))
            e_front, e_back = e_front * sign, e_back * sign
            edge = e_back.detach().argmin(-1)  # the edge the back pixel lies beyond
            ef = e_front.gather(-1, edge[:, None]).squeeze(-1)
            eb = e_back.gather(-1, edge[:, None]).squeeze(-1)
            keep = (eb.detach() < 0) & (ef.detach() >= 0) & silhouette[bi, ff, edge]
            if not bool(keep.any()):
                continue
            front, back, ef, eb = front[keep], back[keep], ef[keep], eb[keep]
            t = (ef / (ef - eb)).clamp(0, 1)  # crossing position from the front pixel centre, in pixels
            # the pixel whose box the edge cuts takes the other colour by the uncovered/covered fraction
            to_back = (t >= 0.5).unsqueeze(-1)
            weight = torch.where(to_back, t.unsqueeze(-1) - 0.5, 0.5 - t.unsqueeze(-1))
            diff = flat[front] - flat[back]
            target = torch.where(to_back.squeeze(-1), back, front)
            delta = delta.index_add(0, target, weight * torch.where(to_back, diff, -diff))
        return (flat + delta).view(b, h, w, c)


def _min3(t: Tensor) -> Tensor:
    """Minimum over a last dimension of size 3 (element-wise ops are much faster than amin here)."""
    return torch.minimum(torch.minimum(t[..., 0], t[..., 1]), t[..., 2])


def _max3(t: Tensor) -> Tensor:
    return torch.maximum(torch.maximum(t[..., 0], t[..., 1]), t[..., 2])


def _group_ids(rows: Tensor) -> Tensor:
    """(N,) id per row of an (N,K) integer tensor, equal rows sharing one id (lexicographic sort, no unique(dim))."""
    order = torch.arange(rows.shape[0], device=rows.device)
    for c in reversed(range(rows.shape[1])):
        order = order[torch.argsort(rows[order, c], stable=True)]
    s = rows[order]
    new = torch.ones(rows.shape[0], dtype=torch.long, device=rows.device)
    new[1:] = (s[1:] != s[:-1]).any(-1).long()
    ids = torch.empty_like(order)
    ids[order] = torch.cumsum(new, 0) - 1
    return ids


def _flat_pixel_ndc(pix: Tensor, h: int, w: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    rem = pix % (h * w)
    return _pixel_ndc(rem % w, w, dtype), _pixel_ndc(rem // w, h, dtype)


def _silhouette_edges(pos: Tensor, tri: Tensor) -> Tensor:
    """(B,F,3) bool: is the edge opposite corner ``i`` of each face a silhouette in this view?

    As in nvdiffrast, an edge is a silhouette when it has one face (boundary), more than two (non-manifold), or two
    faces facing opposite ways on screen. Vertices at identical clip positions (UV-seam duplicates) are welded first,
    so texture seams are not mistaken for boundaries.
    """
    b, f = pos.shape[0], tri.shape[0]
    if f == 0:
        return torch.zeros(b, 0, 3, dtype=torch.bool, device=pos.device)
    # weld on the first view's clip (x, y, w): equal 3D points have equal clip coordinates
    weld = _group_ids(torch.round(pos[0][:, [0, 1, 3]].clamp(-1e6, 1e6) * 2.0**20).to(torch.long))
    tw = weld[tri]  # (F,3)
    a, c = tw[:, [1, 2, 0]], tw[:, [2, 0, 1]]  # edge opposite corner i joins corners i+1, i+2
    lo, hi = torch.minimum(a, c).flatten(), torch.maximum(a, c).flatten()
    key = lo * (int(weld.max()) + 1) + hi  # (F*3,)
    order = torch.argsort(key)
    sk = key[order]
    same_next = torch.zeros_like(sk, dtype=torch.bool)
    same_next[:-1] = sk[:-1] == sk[1:]
    _, inv, counts = torch.unique_consecutive(sk, return_inverse=True, return_counts=True)
    manifold = counts[inv] == 2
    partner = torch.zeros_like(order)
    first = same_next & manifold
    partner[order[first]] = order[torch.nonzero(first).squeeze(1) + 1]
    second = torch.zeros_like(first)
    second[1:] = first[:-1]
    partner[order[second]] = order[torch.nonzero(second).squeeze(1) - 1]
    has_partner = torch.zeros(f * 3, dtype=torch.bool, device=pos.device)
    has_partner[order] = manifold
    m = pos[:, tri][..., [0, 1, 3]]  # (B,F,3,3) rows = corners (x, y, w)
    facing = torch.linalg.det(m) > 0  # (B,F)
    edge_face = torch.arange(f * 3, device=pos.device) // 3
    partner_face = partner // 3
    flip = facing[:, edge_face] != facing[:, partner_face]
    return (~has_partner | flip).view(b, f, 3)


def _bilinear(tex_nchw: Tensor, uv: Tensor, boundary_mode: str) -> Tensor:
    """Bilinear sample (B,C,Ht,Wt) at uv (B,H,W,2) with texel centres at (i+0.5)/size -> (B,H,W,C)."""
    th, tw = tex_nchw.shape[-2:]
    if boundary_mode == "wrap":
        u, v = torch.frac(uv[..., 0]), torch.frac(uv[..., 1])
        u, v = torch.where(u < 0, u + 1, u), torch.where(v < 0, v + 1, v)
        padded = F.pad(tex_nchw, (1, 1, 1, 1), mode="circular")
    else:
        u, v = uv[..., 0], uv[..., 1]
        padded = F.pad(tex_nchw, (1, 1, 1, 1), mode="replicate")
    x = u * tw - 0.5 + 1  # texel coordinates in the padded texture
    y = v * th - 0.5 + 1
    gx = 2 * x / (tw + 1) - 1
    gy = 2 * y / (th + 1) - 1
    grid = torch.stack([gx, gy], -1).to(tex_nchw.dtype)
    out = F.grid_sample(padded, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.permute(0, 2, 3, 1)


def mip_pyramid(tex_nchw: Tensor, max_mip_level: int | None = None) -> list[Tensor]:
    """Box-filtered mip chain, level 0 = ``tex``; each level halves (floor, min 1) until 1x1 or ``max_mip_level``."""
    levels = [tex_nchw]
    while max(levels[-1].shape[-2:]) > 1 and (max_mip_level is None or len(levels) <= max_mip_level):
        h, w = levels[-1].shape[-2:]
        if h % 2 == 0 and w % 2 == 0:
            levels.append(F.avg_pool2d(levels[-1], 2))  # same as "area" here, and faster
        else:
            levels.append(F.interpolate(levels[-1], size=(max(1, h // 2), max(1, w // 2)), mode="area"))
    return levels
