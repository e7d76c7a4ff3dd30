"""Pure-PyTorch tile-based differentiable Gaussian rasterizer (CPU and CUDA).

Same image formation as diff-gaussian-rasterization: a Gaussian may touch the pixels of the 16 x 16 tiles in
its 3-sigma rectangle, Gaussians are composited front to back per tile, ``alpha = min(0.99, o * G)`` is
skipped below 1/255 and compositing stops before transmittance drops below 1e-4.

How it stays vectorised (no Python loop over tiles or Gaussians):
1. Binning: every visible Gaussian emits one (block, gaussian) pair per 8 x 8 pixel block inside its tile
   rectangle. Pairs that provably cannot reach alpha >= 1/255 anywhere in the block (distance to the block's
   pixel centres versus the ellipse's widest axis and the opacity) are dropped: this changes no pixel. A
   stable sort by block of pairs emitted in depth order gives every block's front-to-back list.
2. Blocks are grouped by list length and padded per group, so each group is one dense (blocks, 64, L) tensor.
3. The exponent ``log o - 0.5 d^T conic d`` is a quadratic in the pixel offset from the block centre, so one
   matmul of 6 pixel features with 6 per-pair coefficients gives every alpha. Transmittance is ``exp`` of an
   exclusive cumsum of ``log(1 - alpha)``; the 1e-4 stop is the prefix where the inclusive sum stays >=
   log(1e-4) (transmittance only decreases, so this equals the sequential rule).
4. A custom autograd function composites and back-propagates each group with the closed-form 3DGS gradient,
   keeping only alpha and the weights, so memory is linear in (Gaussians x covered pixels).
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch
from torch import Tensor

from cg_lightning.cameras import Camera
from cg_lightning.gaussians.model import GaussianModel
from cg_lightning.render.gaussian.base import GaussianRenderOutput, gaussian_colors
from cg_lightning.render.gaussian.projection import TILE, project_gaussians

__all__ = ["TorchGaussianRasterizer", "rasterize_projected"]

ALPHA_MAX = 0.99
ALPHA_MIN = 1.0 / 255.0
LOG_ALPHA_MAX = math.log(ALPHA_MAX)
LOG_T_MIN = math.log(1e-4)
# F.threshold keeps x > th; the reference keeps alpha >= 1/255, so use the float32 just below 1/255.
_THRESH = float(np.nextafter(np.float32(ALPHA_MIN), np.float32(0.0)))
_LOG_T_THRESH = float(np.nextafter(np.float32(LOG_T_MIN), np.float32(-np.inf)))  # keep log T >= log(1e-4)
_PAD_LOGIT = -1.0e4  # padded slots: exp(-1e4) == 0


def _pixel_features(tile: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(tile*tile, 6) features [u^2, v^2, uv, u, v, 1] of the pixel centres (row-major), relative to the
    tile centre."""
    r = torch.arange(tile, device=device, dtype=dtype) + 0.5 - 0.5 * tile
    v, u = torch.meshgrid(r, r, indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    return torch.stack([u * u, v * v, u * v, u, v, torch.ones_like(u)], dim=-1)


class _Scratch(threading.local):
    """Reusable CPU buffers for the per-chunk temporaries.

    A fresh multi-megabyte CPU tensor is first-touch page-faulted by the kernel, which costs several times
    more than the arithmetic on it; reusing one buffer avoids that. Only temporaries that die inside one
    forward or backward call live here. CUDA has a caching allocator, so it allocates normally.
    """

    def __init__(self) -> None:
        self.buf: Tensor | None = None

    def take(self, like: Tensor, count: int) -> list[Tensor]:
        if like.device.type != "cpu":
            return [torch.empty_like(like) for _ in range(count)]
        n = like.numel()
        buf = self.buf
        if buf is None or buf.dtype != like.dtype or buf.numel() < n * count:
            buf = self.buf = torch.empty(n * count, dtype=like.dtype)
        return [buf[i * n : (i + 1) * n].view(like.shape) for i in range(count)]


_SCRATCH = _Scratch()


class _CompositeTiles(torch.autograd.Function):
    """out[t, p] = sum_i w[t, p, i] attr[t, i], w = alpha T front to back, alpha = exp(feat @ coef).

    Written with dense, in-place, mask-free passes (boolean masks, log1p and fresh allocations are slow on
    CPU). ``may_clamp`` says whether some opacity is close enough to 0.99 for the clamp to bite; if not, the
    clamp passes are skipped.
    """

    @staticmethod
    def forward(ctx, coef: Tensor, attr: Tensor, feat: Tensor, chunk: int, may_clamp: bool) -> Tensor:
        n_tiles, length, _ = coef.shape
        out = coef.new_empty(n_tiles, feat.shape[0], attr.shape[-1])
        alpha_all = coef.new_empty(n_tiles, feat.shape[0], length)
        w_all = torch.empty_like(alpha_all)
        one = coef.new_ones(())
        for s in range(0, n_tiles, chunk):
            alpha, w = alpha_all[s : s + chunk], w_all[s : s + chunk]
            (cum,) = _SCRATCH.take(alpha, 1)
            torch.matmul(feat, coef[s : s + chunk].transpose(1, 2), out=alpha)  # log(o) + power, (t, P, L)
            alpha.exp_()
            if may_clamp:
                alpha.clamp_(max=ALPHA_MAX)
            torch.nn.functional.threshold_(alpha, _THRESH, 0.0)  # alpha < 1/255 -> skipped
            torch.sub(one, alpha, out=w).log_()  # log(1 - alpha)
            torch.cumsum(w, dim=-1, out=cum)  # log T_inclusive
            if bool((cum[..., -1] < LOG_T_MIN).any()):  # cum decreases: last column decides
                torch.nn.functional.threshold_(cum, _LOG_T_THRESH, -math.inf)  # T_incl < 1e-4 -> stop
            torch.sub(cum, w, out=w).exp_().mul_(alpha)  # alpha * T_exclusive (0 if stopped)
            torch.matmul(w, attr[s : s + chunk], out=out[s : s + chunk])
        ctx.chunk, ctx.may_clamp = chunk, may_clamp
        ctx.save_for_backward(coef, attr, feat, alpha_all, w_all)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        coef, attr, feat, alpha_all, w_all = ctx.saved_tensors
        chunk = ctx.chunk
        grad_coef = torch.empty_like(coef) if ctx.needs_input_grad[0] else None
        grad_attr = torch.empty_like(attr) if ctx.needs_input_grad[1] else None
        grad_out = grad_out.contiguous()
        one = coef.new_ones(())
        alpha_max = coef.new_full((), ALPHA_MAX)
        for s in range(0, coef.shape[0], chunk):
            g_out, alpha, w = grad_out[s : s + chunk], alpha_all[s : s + chunk], w_all[s : s + chunk]
            if grad_attr is not None:
                torch.matmul(w.transpose(1, 2), g_out, out=grad_attr[s : s + chunk])
            if grad_coef is None:
                continue
            # dL/dlogit_i = w_i g_i - alpha_i / (1 - alpha_i) * sum_{j>i} w_j g_j   with g = dL/dw. Stopped
            # entries have w = 0 and nothing behind them, so they get exactly 0 without a mask.
            gw, cum, ratio = _SCRATCH.take(alpha, 3)
            torch.matmul(g_out, attr[s : s + chunk].transpose(1, 2), out=gw).mul_(w)
            torch.cumsum(gw, dim=-1, out=cum)
            cum.sub_(cum[..., -1:].clone())  # -sum_{j>i} w_j g_j
            torch.sub(one, alpha, out=ratio)
            torch.div(alpha, ratio, out=ratio)
            gw.addcmul_(ratio, cum)
            if ctx.may_clamp:  # clamped alpha (== 0.99 exactly): zero gradient
                gw.mul_(torch.sub(alpha_max, alpha, out=ratio).sign_())
            torch.matmul(gw.transpose(1, 2), feat, out=grad_coef[s : s + chunk])
        return grad_coef, grad_attr, None, None, None


def _group_tiles(counts: list[int], ratio: float) -> list[tuple[list[int], int]]:
    """Greedy grouping of non-empty blocks (by pair count, descending): each group is padded to its first
    block's count and only holds blocks with at least ``ratio`` times that many pairs."""
    order = sorted(((c, i) for i, c in enumerate(counts) if c > 0), reverse=True)
    groups: list[tuple[list[int], int]] = []
    for c, i in order:
        if groups and c >= ratio * groups[-1][1]:
            groups[-1][0].append(i)
        else:
            groups.append(([i], c))
    return groups


@torch.no_grad()
def _bin_pairs(
    pix: Tensor, opacity: Tensor, cov2d: Tensor, rect: Tensor, n_bx: int, block: int, width: int, height: int
) -> tuple[Tensor, Tensor]:
    """(block, gaussian) pairs of depth-sorted Gaussians, sorted by block then depth: (gaussian index, block).

    A pair is dropped when its block provably stays below alpha 1/255: the distance from the mean to the
    block's pixel centres, measured against the ellipse's widest axis and the opacity, is too large. First the
    3DGS rectangle is shrunk to the bounding box of that disc, then each remaining corner block is tested.
    Dropped pairs would not change any pixel.
    """
    device, dtype = pix.device, pix.dtype
    a, b, c = cov2d.unbind(-1)
    mid = 0.5 * (a + c)
    lam_max = mid + torch.sqrt(torch.clamp(mid * mid - (a * c - b * b), min=0.0))
    budget = (torch.log(255.0 * opacity.clamp_min(1e-30)) + 1e-3) * lam_max  # max allowed 0.5 * dist^2
    reach = torch.sqrt(2.0 * budget.clamp_min(0.0))
    px, py = pix.unbind(-1)
    # block b holds pixel centres [b*block + 0.5, b*block + block - 0.5]
    x0 = torch.ceil((px - reach - (block - 0.5)) / block).nan_to_num(0.0).clamp(-1, n_bx).long()
    x1 = torch.floor((px + reach - 0.5) / block).nan_to_num(-1.0).clamp(-1, n_bx).long() + 1
    n_by = (height + block - 1) // block
    y0 = torch.ceil((py - reach - (block - 0.5)) / block).nan_to_num(0.0).clamp(-1, n_by).long()
    y1 = torch.floor((py + reach - 0.5) / block).nan_to_num(-1.0).clamp(-1, n_by).long() + 1
    x0, y0 = torch.maximum(x0, rect[:, 0]), torch.maximum(y0, rect[:, 1])
    x1, y1 = torch.minimum(x1, rect[:, 2]), torch.minimum(y1, rect[:, 3])
    span_x = (x1 - x0).clamp_min(0)
    span_y = (y1 - y0).clamp_min(0)
    cnt = torch.where(budget >= 0, span_x * span_y, torch.zeros_like(span_x))

    pair_g = torch.repeat_interleave(torch.arange(rect.shape[0], device=device), cnt)
    local = torch.arange(pair_g.numel(), device=device) - torch.repeat_interleave(
        torch.cumsum(cnt, 0) - cnt, cnt
    )
    w_g = torch.repeat_interleave(span_x, cnt)
    row = torch.div(local, w_g, rounding_mode="floor")
    bx = torch.repeat_interleave(x0, cnt) + (local - row * w_g)
    by = torch.repeat_interleave(y0, cnt) + row
    x_lo = (bx * block).to(dtype) + 0.5
    y_lo = (by * block).to(dtype) + 0.5
    x_hi = torch.clamp(x_lo + (block - 1), max=width - 0.5)
    y_hi = torch.clamp(y_lo + (block - 1), max=height - 0.5)
    ppx, ppy = torch.repeat_interleave(px, cnt), torch.repeat_interleave(py, cnt)
    dx = torch.clamp(torch.maximum(x_lo - ppx, ppx - x_hi), min=0.0)
    dy = torch.clamp(torch.maximum(y_lo - ppy, ppy - y_hi), min=0.0)
    keep = 0.5 * (dx * dx + dy * dy) <= torch.repeat_interleave(budget, cnt)
    block_id, perm = torch.sort((by * n_bx + bx)[keep], stable=True)  # stable: keeps depth order per block
    return pair_g[keep][perm], block_id


@torch.no_grad()
def _padded_slots(counts: Tensor, groups: list[tuple[list[int], int]], pad: int) -> tuple[Tensor, Tensor]:
    """Flat pair index (``pad`` if empty) of every (block row, slot) of all groups, and each row's block."""
    device = counts.device
    rows = torch.tensor([t for tiles, _ in groups for t in tiles], device=device)
    row_len = torch.tensor([length for tiles, length in groups for _ in tiles], device=device)
    starts = torch.cumsum(counts, 0) - counts
    row_of = torch.repeat_interleave(torch.arange(rows.numel(), device=device), row_len)
    slot = torch.arange(row_of.numel(), device=device) - (torch.cumsum(row_len, 0) - row_len)[row_of]
    blk = rows[row_of]
    pos = torch.where(slot < counts[blk], starts[blk] + slot, torch.full_like(slot, pad))
    return pos, rows


def rasterize_projected(
    pix: Tensor,
    conic: Tensor,
    opacity: Tensor,
    depth: Tensor,
    colors: Tensor,
    cov2d: Tensor,
    radii: Tensor,
    rect: Tensor,
    width: int,
    height: int,
    bg: Tensor,
    tile: int = TILE,
    block: int = 8,
    max_elems: int = 1 << 23,
    group_ratio: float | None = None,
    stats: dict | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Composite projected Gaussians: image (3,H,W) over ``bg`` (not clamped), alpha (1,H,W), depth (1,H,W).

    ``rect`` is in units of ``tile`` (the 16 px tiles that decide which pixels a Gaussian may touch, as in
    3DGS); the work is done on ``block`` x ``block`` pixel blocks inside those rectangles, which culls more
    empty (Gaussian, pixel) pairs without changing any pixel. ``max_elems`` bounds the temporaries of one
    chunk; ``group_ratio`` is the minimum fill of a padded group (blocks with L..ratio*L pairs share one
    padded tensor). ``stats``, if given, receives the work size: pairs, padded elements (the saved tensors
    hold 2 floats each), groups.
    """
    if tile % block:
        raise ValueError(f"block ({block}) must divide tile ({tile})")
    device, dtype = pix.device, pix.dtype
    if group_ratio is None:  # finer groups pad less; on GPU every group costs kernel launches
        group_ratio = 0.95 if device.type == "cpu" else 0.8
    n_bx, n_by = (width + block - 1) // block, (height + block - 1) // block
    n_blocks, n_pix, channels = n_bx * n_by, block * block, colors.shape[1] + 2
    rect = torch.minimum(rect * (tile // block), rect.new_tensor([n_bx, n_by, n_bx, n_by]))

    vis = torch.nonzero(radii > 0).squeeze(1)
    vis = vis[torch.argsort(depth.detach()[vis], stable=True)]  # front to back
    pair_g, block_id = _bin_pairs(
        pix.detach()[vis], opacity.detach()[vis], cov2d.detach()[vis], rect[vis], n_bx, block, width, height
    )
    full = torch.zeros(n_blocks, n_pix, channels, device=device, dtype=dtype)
    if stats is not None:
        stats.update(pairs=int(pair_g.numel()), elements=0, groups=0)
    if pair_g.numel() > 0:
        counts = torch.bincount(block_id, minlength=n_blocks)
        groups = _group_tiles(counts.tolist(), group_ratio)
        pos, rows = _padded_slots(counts, groups, pad=pair_g.numel())
        # Per-pair coefficients of the exponent as a quadratic in the pixel offset u, v from the block centre:
        # log o - 0.5 (a dx^2 + c dy^2) - b dx dy with dx = u - ddx, dy = v - ddy.
        centre = torch.stack([block_id % n_bx, block_id // n_bx], dim=-1).to(dtype) * block + 0.5 * block
        gp = vis[pair_g]
        ca, cb, cc = conic[gp].unbind(-1)
        ddx, ddy = (pix[gp] - centre).unbind(-1)
        log_o = torch.log(opacity[gp].clamp_min(1e-30))
        coef = torch.stack(
            [
                -0.5 * ca,
                -0.5 * cc,
                -cb,
                ca * ddx + cb * ddy,
                cc * ddy + cb * ddx,
                log_o - 0.5 * (ca * ddx * ddx + cc * ddy * ddy) - cb * ddx * ddy,
            ],
            dim=-1,
        )
        coef = torch.cat([coef, coef.new_tensor([[0.0, 0.0, 0.0, 0.0, 0.0, _PAD_LOGIT]])])
        attr = torch.cat([colors - bg, depth[:, None], torch.ones_like(depth[:, None])], dim=1)[gp]
        attr = torch.cat([attr, attr.new_zeros(1, channels)])
        may_clamp = bool(log_o.max() > LOG_ALPHA_MAX - 1e-3)
        feat = _pixel_features(block, device, dtype)
        sizes = [len(tiles) * length for tiles, length in groups]
        if stats is not None:
            stats.update(elements=sum(sizes) * n_pix, groups=len(groups))
        coef_g = torch.split(coef[pos], sizes)
        attr_g = torch.split(attr[pos], sizes)
        outs = []
        for (tiles, length), cg, ag in zip(groups, coef_g, attr_g, strict=True):
            chunk = max(1, max_elems // (n_pix * length))
            outs.append(
                _CompositeTiles.apply(
                    cg.view(len(tiles), length, 6),
                    ag.view(len(tiles), length, channels),
                    feat,
                    chunk,
                    may_clamp,
                )
            )
        full = full.index_copy(0, rows, torch.cat(outs))

    img = full.reshape(n_by, n_bx, block, block, channels).permute(4, 0, 2, 1, 3)
    img = img.reshape(channels, n_by * block, n_bx * block)[:, :height, :width]
    image = img[:3] + bg[:, None, None]
    return image, img[4:5], img[3:4]


class TorchGaussianRasterizer:
    """Backend ``torch``: runs wherever PyTorch runs; reference semantics for the CUDA backends."""

    name = "torch"

    def __init__(self, tile_size: int = TILE, block_size: int = 8, max_elems: int = 1 << 23) -> None:
        self.tile_size = int(tile_size)
        self.block_size = int(block_size)
        self.max_elems = int(max_elems)
        self.last_stats: dict = {}

    def render(
        self, model: GaussianModel, camera: Camera, bg_color: Tensor, scale_modifier: float = 1.0
    ) -> GaussianRenderOutput:
        means = model.means
        bg = torch.as_tensor(bg_color, dtype=means.dtype, device=means.device).reshape(3)
        proj = project_gaussians(
            means, model.scales * scale_modifier, model.rotations, camera, tile=self.tile_size
        )
        colors = gaussian_colors(model, camera)
        image, alpha, depth = rasterize_projected(
            proj.pix,
            proj.conic,
            model.opacities[:, 0],
            proj.depth,
            colors,
            proj.cov2d,
            proj.radii,
            proj.rect,
            camera.width,
            camera.height,
            bg,
            tile=self.tile_size,
            block=self.block_size,
            max_elems=self.max_elems,
            stats=self.last_stats,
        )
        return GaussianRenderOutput(
            image=image.clamp(0.0, 1.0), alpha=alpha, depth=depth, radii=proj.radii, means2d=proj.means2d
        )
