"""Pure-PyTorch tile-based differentiable Gaussian rasterizer (CPU and CUDA).

Same image formation as diff-gaussian-rasterization: a Gaussian may touch the pixels of the 16 x 16 tiles in
its 3-sigma rectangle, Gaussians are composited front to back per tile, ``alpha = min(0.99, o * G)`` is
skipped below 1/255 and compositing stops before transmittance drops below 1e-4.

How it stays vectorised (no Python loop over tiles or Gaussians):
1. Binning: every visible Gaussian emits one (block, gaussian) pair per 8 x 8 pixel block inside its tile
   rectangle. Pairs that provably cannot reach alpha >= 1/255 anywhere in the block (distance to the block's
   pixel centres versus the ellipse's widest axis and the opacity) are dropped: this changes no pixel. A
   stable sort by block of pairs emitted in depth order gives every block's front-to-back list.
2. Blocks are composited in rounds of ``segment`` list entries, each round one dense (blocks, 64, segment)
   tensor, carrying each pixel's log transmittance. A block whose pixels have all stopped leaves the walk, so
   the work ends at each block's termination point and padding is at most one segment per block (at 20k
   Gaussians, 256 px, the evaluated elements are 2.4-2.7x the contributing ones; before, 2.5-16x).
3. The exponent ``log o - 0.5 d^T conic d`` is a quadratic in the pixel offset from the block centre, so one
   matmul of 6 pixel features with 6 per-pair coefficients gives every alpha (summed in float64 on CPU: the
   terms cancel far from the block centre). Transmittance is ``exp`` of an exclusive cumsum of
   ``log(1 - alpha)``; the 1e-4 stop is the prefix where the inclusive sum stays >= log(1e-4) (transmittance
   only decreases, so this equals the sequential rule).
4. A custom autograd function composites and back-propagates the rounds with the closed-form 3DGS gradient,
   keeping only alpha and the weights of evaluated elements, so memory is linear in the work done.
"""

from __future__ import annotations

import math

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


class _Plan:
    """Where every block's front-to-back list lives in the flat pair arrays, and how to walk it.

    ``starts``/``counts`` index the sorted pairs; ``pad`` is the index of an all-zero dummy pair that fills the
    tail of a block's last segment; ``dead`` marks pixels outside the image (they start terminated, so partial
    edge blocks can terminate too); ``segment`` is the list length composited per round. The counters are
    filled by the forward pass.
    """

    def __init__(
        self,
        starts: Tensor,
        counts: Tensor,
        pad: int,
        dead: Tensor,
        segment: int,
        max_elems: int,
        may_clamp: bool,
        count_contributing: bool,
        grow_after: int = 1 << 30,
        max_segment: int = 0,
    ) -> None:
        self.starts, self.counts, self.pad, self.dead = starts, counts, pad, dead
        self.segment, self.max_elems = segment, max_elems
        self.grow_after, self.max_segment = grow_after, max_segment
        self.may_clamp, self.count_contributing = may_clamp, count_contributing
        self.evaluated = 0
        self.contributing = 0
        self.rounds = 0


class _CompositeSegments(torch.autograd.Function):
    """out[b, p] = sum_i w[b, p, i] attr[i], w = alpha T front to back, alpha = exp(feat @ coef[i]).

    Blocks are composited in rounds of ``segment`` list entries each, carrying every pixel's log transmittance
    from round to round. After each round, a block whose pixels have all stopped (T below 1e-4) leaves the
    walk: nothing behind that point can change its pixels, so it is never evaluated. Padding is at most one
    segment per block. Each round is a few dense, in-place passes (boolean masks and log1p are slow on CPU);
    the backward walks the rounds in reverse, carrying ``sum_{j behind} w_j g_j`` per pixel.
    """

    @staticmethod
    def forward(ctx, coef: Tensor, attr: Tensor, feat: Tensor, plan: _Plan) -> Tensor:
        n_blocks, n_pix = plan.counts.numel(), feat.shape[0]
        longest = int(plan.counts.max())
        seg = max(1, min(plan.segment, longest))
        out = attr.new_zeros(n_blocks, n_pix, attr.shape[-1])
        log_t = torch.where(plan.dead, -math.inf, 0.0).to(attr.dtype)  # inclusive log T carried between rounds
        ends = plan.starts + plan.counts
        one = attr.new_ones(())
        feat_e = feat.to(coef.dtype)  # the exponent is summed in coef's dtype (see rasterize_projected)
        saved: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        active = torch.nonzero(plan.counts > 0).squeeze(1)
        base = 0
        while active.numel() > 0:
            slots = torch.arange(seg, device=coef.device)
            rows_per_chunk = max(1, plan.max_elems // (n_pix * seg))
            for rows in torch.split(active, rows_per_chunk):
                pos = plan.starts[rows, None] + base + slots
                pos = torch.where(pos < ends[rows, None], pos, plan.pad)
                c, a = coef[pos], attr[pos]  # (n, S, 6), (n, S, C)
                alpha = torch.matmul(feat_e, c.transpose(1, 2)).to(attr.dtype)  # log(o) + power, (n, P, S)
                alpha.exp_()
                if plan.may_clamp:
                    alpha.clamp_(max=ALPHA_MAX)
                torch.nn.functional.threshold_(alpha, _THRESH, 0.0)  # alpha < 1/255 -> skipped
                w = torch.sub(one, alpha).log_()  # log(1 - alpha)
                cum = torch.cumsum(w, dim=-1).add_(log_t[rows, :, None])  # log T inclusive
                if bool((cum[..., -1] < LOG_T_MIN).any()):  # cum decreases: last column decides
                    torch.nn.functional.threshold_(cum, _LOG_T_THRESH, -math.inf)  # T_incl < 1e-4 -> stop
                log_t[rows] = cum[..., -1]
                torch.sub(cum, w, out=w).exp_().mul_(alpha)  # alpha * T_exclusive (0 once stopped)
                out.index_add_(0, rows, torch.matmul(w, a))
                saved.append((rows, pos, alpha, w))
                plan.evaluated += w.numel()
                if plan.count_contributing:
                    plan.contributing += int(torch.count_nonzero(w))
            base += seg
            alive = ~torch.isneginf(log_t[active]).all(dim=1)
            active = active[alive & (plan.counts[active] > base)]
            plan.rounds += 1
            if plan.rounds >= plan.grow_after:  # few deep blocks left: longer rounds, fewer per-round passes
                seg = min(2 * seg, max(plan.segment, plan.max_segment), longest)
        ctx.plan, ctx.saved = plan, saved
        ctx.save_for_backward(coef, attr, feat)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        coef, attr, feat = ctx.saved_tensors
        plan = ctx.plan
        need_coef, need_attr = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_coef = torch.zeros_like(coef, dtype=attr.dtype) if need_coef else None
        grad_attr = torch.zeros_like(attr) if need_attr else None
        grad_out = grad_out.contiguous()
        behind = grad_out.new_zeros(grad_out.shape[:2])  # sum over later rounds of w_j g_j, per pixel
        one = coef.new_ones(())
        alpha_max = coef.new_full((), ALPHA_MAX)
        for rows, pos, alpha, w in reversed(ctx.saved):
            g_out = grad_out[rows]  # (n, P, C)
            flat = pos.reshape(-1)  # unique, except the pad pair whose gradient is never used
            if need_attr:
                grad_attr[flat] = torch.matmul(w.transpose(1, 2), g_out).reshape(-1, attr.shape[-1])
            if not need_coef:
                continue
            # dL/dlogit_i = w_i g_i - alpha_i / (1 - alpha_i) * sum_{j>i} w_j g_j   with g = dL/dw. Stopped
            # entries have w = 0 and nothing behind them, so they get exactly 0 without a mask.
            gw = torch.matmul(g_out, attr[pos].transpose(1, 2)).mul_(w)
            cum = torch.cumsum(gw, dim=-1)
            total = cum[..., -1].clone()
            cum.neg_().add_((total + behind[rows])[..., None])  # sum_{j>i} w_j g_j
            behind[rows] += total
            ratio = torch.sub(one, alpha)
            torch.div(alpha, ratio, out=ratio)
            gw.addcmul_(ratio, cum, value=-1.0)
            if plan.may_clamp:  # clamped alpha (== 0.99 exactly): zero gradient
                gw.mul_(torch.sub(alpha_max, alpha, out=ratio).sign_())
            grad_coef[flat] = torch.matmul(gw.transpose(1, 2), feat).reshape(-1, 6)
        if grad_coef is not None:
            grad_coef = grad_coef.to(coef.dtype)
        return grad_coef, grad_attr, None, None


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
    segment: int = 16,
    max_elems: int = 1 << 22,
    stats: dict | None = None,
    grow_after: int = 8,
    max_segment: int = 128,
) -> tuple[Tensor, Tensor, Tensor]:
    """Composite projected Gaussians: image (3,H,W) over ``bg`` (not clamped), alpha (1,H,W), depth (1,H,W).

    ``rect`` is in units of ``tile`` (the 16 px tiles that decide which pixels a Gaussian may touch, as in
    3DGS); the work is done on ``block`` x ``block`` pixel blocks inside those rectangles, which culls more
    empty (Gaussian, pixel) pairs without changing any pixel. Each block's list is walked ``segment`` entries
    at a time and dropped once all its pixels have stopped. ``max_elems`` bounds the temporaries of one
    chunk. ``stats``, if given, receives the work size: ``pairs`` (block, Gaussian) pairs, ``elements``
    (pixel, Gaussian) evaluations, ``rounds``; with ``stats["count_contributing"] = True`` also
    ``contributing``, the elements with a non-zero weight (an extra pass).
    """
    if tile % block:
        raise ValueError(f"block ({block}) must divide tile ({tile})")
    if segment < 1:
        raise ValueError(f"segment ({segment}) must be >= 1")
    device, dtype = pix.device, pix.dtype
    n_bx, n_by = (width + block - 1) // block, (height + block - 1) // block
    n_blocks, n_pix, channels = n_bx * n_by, block * block, colors.shape[1] + 2
    rect = torch.minimum(rect * (tile // block), rect.new_tensor([n_bx, n_by, n_bx, n_by]))

    vis = torch.nonzero(radii > 0).squeeze(1)
    vis = vis[torch.argsort(depth.detach()[vis], stable=True)]  # front to back
    pair_g, block_id = _bin_pairs(
        pix.detach()[vis], opacity.detach()[vis], cov2d.detach()[vis], rect[vis], n_bx, block, width, height
    )
    count_contributing = bool(stats is not None and stats.get("count_contributing"))
    if stats is not None:
        stats.update(pairs=int(pair_g.numel()), elements=0, rounds=0, contributing=0)
    if pair_g.numel() > 0:
        counts = torch.bincount(block_id, minlength=n_blocks)
        # Per-pair coefficients of the exponent as a quadratic in the pixel offset u, v from the block centre:
        # log o - 0.5 (a dx^2 + c dy^2) - b dx dy with dx = u - ddx, dy = v - ddy. Far from the block centre
        # its terms are large and cancel, so on CPU the coefficients and their sum are float64 (float32
        # rounding there reached 4e-6 in the image; the rest stays in float32).
        edtype = torch.float64 if device.type == "cpu" and dtype == torch.float32 else dtype
        centre = torch.stack([block_id % n_bx, block_id // n_bx], dim=-1).to(edtype) * block + 0.5 * block
        gp = vis[pair_g]
        ca, cb, cc = conic[gp].to(edtype).unbind(-1)
        ddx, ddy = (pix[gp].to(edtype) - centre).unbind(-1)
        log_o = torch.log(opacity[gp].clamp_min(1e-30)).to(edtype)
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
        r = torch.arange(block, device=device)
        row_px = (torch.arange(n_by, device=device)[:, None] * block + r)[:, :, None]  # (by, v, 1)
        col_px = (torch.arange(n_bx, device=device)[:, None] * block + r)[:, None, :]  # (bx, 1, u)
        dead = (row_px[:, None] >= height) | (col_px[None] >= width)  # (by, bx, v, u)
        plan = _Plan(
            starts=torch.cumsum(counts, 0) - counts,
            counts=counts,
            pad=pair_g.numel(),
            dead=dead.reshape(n_blocks, n_pix),
            segment=segment,
            max_elems=max_elems,
                may_clamp=bool(log_o.max() > LOG_ALPHA_MAX - 1e-3),
            count_contributing=count_contributing,
            grow_after=grow_after,
            max_segment=max_segment,
        )
        full = _CompositeSegments.apply(coef, attr, _pixel_features(block, device, dtype), plan)
        if stats is not None:
            stats.update(elements=plan.evaluated, rounds=plan.rounds, contributing=plan.contributing)
    else:
        full = torch.zeros(n_blocks, n_pix, channels, device=device, dtype=dtype)

    img = full.reshape(n_by, n_bx, block, block, channels).permute(4, 0, 2, 1, 3)
    img = img.reshape(channels, n_by * block, n_bx * block)[:, :height, :width]
    image = img[:3] + bg[:, None, None]
    return image, img[4:5], img[3:4]


class TorchGaussianRasterizer:
    """Backend ``torch``: runs wherever PyTorch runs; reference semantics for the CUDA backends."""

    name = "torch"

    def __init__(
        self,
        tile_size: int = TILE,
        block_size: int = 8,
        segment: int = 16,
        max_elems: int = 1 << 22,
        count_contributing: bool = False,
        grow_after: int = 8,
        max_segment: int = 128,
    ) -> None:
        if grow_after < 1 or max_segment < 1:
            raise ValueError(f"grow_after ({grow_after}) and max_segment ({max_segment}) must be >= 1")
        self.tile_size = int(tile_size)
        self.block_size = int(block_size)
        self.segment = int(segment)
        self.grow_after, self.max_segment = int(grow_after), int(max_segment)
        self.max_elems = int(max_elems)
        self.count_contributing = bool(count_contributing)  # benchmarks: fill last_stats["contributing"]
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
        self.last_stats = {"count_contributing": self.count_contributing}
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
            segment=self.segment,
            max_elems=self.max_elems,
            stats=self.last_stats,
            grow_after=self.grow_after,
            max_segment=self.max_segment,
        )
        return GaussianRenderOutput(
            image=image.clamp(0.0, 1.0), alpha=alpha, depth=depth, radii=proj.radii, means2d=proj.means2d
        )
