"""Gaussians -> density grid -> marching cubes -> (cleaned) world-space mesh.

Follows DreamGaussian's extraction (reference §2.9): drop near-transparent Gaussians, normalise the centres into
[-0.9, 0.9], sample the unnormalised Gaussian mixture density on a ``resolution^3`` grid over [-1, 1]^3 in
``num_blocks^3`` blocks, and run marching cubes at ``iso``.

Why blocks: evaluating every Gaussian at every grid point is O(N R^3). A block only sees the Gaussians whose centre
lies within its bounds +- ``margin_blocks`` block sizes, which keeps the work roughly O(R^3 * local density).

Why a matmul: inside a block the quadratic form d^T A d (d = p - mu, A = Sigma^-1) is expanded into
``phi(p) . w(mu, A)`` with 10 monomials of p, so a (points x Gaussians) chunk is one matmul plus one exp, and the
blocks of one z-row are batched into a single bmm (few large tensor ops: fast on GPU, and on a CPU shared with other
processes, where every small OpenMP op pays a scheduling penalty). Coordinates are taken relative to the block
centre, which keeps the float32 cancellation error of the expansion small (|p|, |mu| <= ~0.3 instead of <= 1).

``cull_sigma=k`` (option, official None; the CPU preset uses it): each Gaussian is evaluated only at the grid points
of its k-sigma box (half-widths k sqrt(Sigma_jj): the axis-aligned box around its k-sigma ellipsoid), kept to the
blocks that DG's centre rule lets it reach: a splat, O(sum of the box volumes) instead of every Gaussian near a block
times every point of the block. A dropped term lies outside the k-sigma ellipsoid, so it is below
``opacity * exp(-k^2/2)`` (k=4: 3.4e-4 of an iso of 1). ``d^T A d`` is evaluated directly on ``d = p - mu`` (no
expansion, no cancellation) and the opacity enters as ``exp(-q/2 + ln o)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from cg_lightning.errors import CGError, ConfigError
from cg_lightning.mesh.mesh import Mesh

# ``cov_floor_voxels`` (option, official 0): the covariance is regularised by (cov_floor_voxels * voxel)^2 on the
# diagonal (normalised units). A Gaussian much thinner than a voxel is a delta for the grid anyway; the floor (0.1 is
# the suggested value) bounds Sigma^-1 so that thin Gaussians do not fall between grid samples and the float32
# expansion stays accurate. The official extraction has no floor (DG ``extract_fields``).
SUGGESTED_COV_FLOOR_VOXELS = 0.1
FLAT_STD_VOXELS = 1e-3
_Q_MAX = 150.0


class NoSurfaceError(CGError):
    """Marching cubes found no surface: the Gaussians are too transparent or too sparse for the iso level."""


def covariances_from_scales_rotations(scales: Tensor, rotations: Tensor) -> Tensor:
    """Sigma = R S S^T R^T from per-axis stds (N,3) and quaternions (N,4) in (w, x, y, z) order (3DGS layout).

    Quaternions need not be normalised (they are normalised here), matching the 3DGS `build_rotation`.
    """
    q = rotations / rotations.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)
    m = rot * scales[:, None, :]
    return m @ m.transpose(1, 2)


def gaussian_tensors(model: Any) -> tuple[Tensor, Tensor, Tensor]:
    """(means (N,3), covariances (N,3,3), opacities (N,)) of a GaussianModel-like object, detached."""
    try:
        means = model.means
        cov = model.covariances()
        opac = model.opacities
    except AttributeError as exc:
        raise TypeError(
            "expected a GaussianModel (means, opacities, covariances()); pass plain tensors to "
            "density_grid_from_tensors instead"
        ) from exc
    return means.detach(), cov.detach(), opac.detach().reshape(-1)


def normalisation(means: Tensor, covariances: Tensor) -> tuple[Tensor, float]:
    """DG's fit of the centres into [-0.9, 0.9]: centre = (min+max)/2, scale = 1.8 / max extent.

    Degenerate case (all centres coincide, e.g. one Gaussian): the extent of the 3-sigma boxes is used instead, so the
    blob still fills the grid rather than producing an infinite scale.
    """
    lo, hi = means.min(0).values, means.max(0).values
    extent = float((hi - lo).max())
    if extent < 1e-6:
        std = covariances.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt()
        lo, hi = (means - 3 * std).min(0).values, (means + 3 * std).max(0).values
        extent = max(float((hi - lo).max()), 1e-6)
    return (lo + hi) / 2, 1.8 / extent


def _monomials(p: Tensor) -> Tensor:
    """phi(p) = [x^2, y^2, z^2, xy, xz, yz, x, y, z, 1] for points (P,3) -> (P,10)."""
    x, y, z = p.unbind(-1)
    return torch.stack([x * x, y * y, z * z, x * y, x * z, y * z, x, y, z, torch.ones_like(x)], dim=-1)


def _quadric_weights(mu: Tensor, a: Tensor) -> Tensor:
    """w with phi(p) . w = (p-mu)^T A (p-mu) for symmetric A; mu (G,3), A (G,3,3) -> (G,10)."""
    am = (a @ mu.unsqueeze(-1)).squeeze(-1)  # (G,3)
    c = (mu * am).sum(-1, keepdim=True)
    return torch.cat(
        [
            a[:, 0, 0, None], a[:, 1, 1, None], a[:, 2, 2, None],
            2 * a[:, 0, 1, None], 2 * a[:, 0, 2, None], 2 * a[:, 1, 2, None],
            -2 * am, c,
        ],
        dim=-1,
    )


def _row_density(phi: Tensor, mu: Tensor, a: Tensor, opac: Tensor, chunk: int) -> Tensor:
    """Density of B blocks at once: phi (P,10) block-local monomials (identical for every block of a uniform grid),
    block-local padded Gaussians mu (B,G,3), A (B,G,3,3), opac (B,G) (padding has opacity 0) -> (B,P)."""
    out = phi.new_zeros(mu.shape[0], phi.shape[0])
    for s in range(0, mu.shape[1], chunk):
        w = _quadric_weights(mu[:, s:s + chunk].reshape(-1, 3), a[:, s:s + chunk].reshape(-1, 3, 3))
        w = w.view(mu.shape[0], -1, 10)
        # Lower clamp: rounding can make q slightly negative at a centre. Upper clamp: exp(-75) ~ 3e-33 is zero for
        # our purpose, and CPU exp takes a ~50x slower path for arguments below ~-88 (underflow).
        q = torch.matmul(phi, w.transpose(1, 2)).clamp_(0.0, _Q_MAX)  # (B,P,g)
        out += torch.bmm(torch.exp_(q.mul_(-0.5)), opac[:, s:s + chunk, None]).squeeze(-1)
    return out


def _bucket_sizes(limit: int) -> Tensor:
    """Padded box sizes 1, 2, ..., 6, then ~15 % apart up to ``limit``: boxes of one bucket share one tensor shape and
    waste at most ~1.15^3 of the work on padding."""
    sizes, s = list(range(1, 7)), 6.0
    while sizes[-1] < limit:
        s *= 1.15
        sizes.append(max(sizes[-1] + 1, int(round(s))))
    sizes[-1] = max(sizes[-1], limit)
    return torch.tensor(sizes)


def _splat_density(mu: Tensor, a: Tensor, opac: Tensor, var: Tensor, xs: Tensor, lo: Tensor, hi: Tensor,
                   margin: float, per: int, k: float, max_elements: int = 1 << 22) -> Tensor:
    """Grid (R,R,R) of sum_i o_i exp(-q_i/2), each Gaussian added at the grid points of its k-sigma box inside the
    blocks DG's centre rule lets it reach (centre within a block's range +- margin). mu (N,3) float64 normalised,
    a (N,3,3) float32 Sigma^-1, opac (N,) float32, var (N,3) float64 diagonal of Sigma. Boxes are grouped by padded
    size (``_bucket_sizes``) and evaluated ``max_elements`` (Gaussian, point) pairs at a time."""
    res, device = xs.numel(), mu.device
    grid = torch.zeros(res**3, dtype=torch.float32, device=device)
    voxel = 2.0 / (res - 1)
    reach = (mu[:, :, None] >= lo - margin) & (mu[:, :, None] <= hi + margin)  # (N,3,blocks), a contiguous run
    nb = lo.numel()
    first = reach.to(torch.uint8).argmax(-1)
    last = nb - 1 - reach.flip(-1).to(torch.uint8).argmax(-1)
    half = k * var.clamp_min(0).sqrt()
    # grid point i sits at -1 + i * voxel: the box [mu - half, mu + half] holds i0..i1
    i0 = torch.maximum(torch.ceil((mu - half + 1) / voxel).clamp(0, res).long(), first * per)
    i1 = torch.minimum(torch.floor((mu + half + 1) / voxel).clamp(-1, res - 1).long(), last * per + per - 1)
    size = i1 - i0 + 1
    live = (opac > 0) & reach.any(-1).all(-1) & (size > 0).all(-1)
    buckets = _bucket_sizes(res).to(device)
    padded = buckets[torch.searchsorted(buckets, size.clamp_min(1))]  # (N,3)
    key = (padded[:, 0] * (res + 1) + padded[:, 1]) * (res + 1) + padded[:, 2]
    key = torch.where(live, key, -1)
    order = torch.argsort(key, stable=True)
    uniq, counts = torch.unique_consecutive(key[order], return_counts=True)
    log_opac = torch.log(opac.clamp_min(1e-30))
    start = 0
    for bucket_key, count in zip(uniq.tolist(), counts.tolist(), strict=True):
        members = order[start:start + count]
        start += count
        if bucket_key < 0:
            continue
        sx, sy, sz = (int(t) for t in padded[members[0]].tolist())
        step = max(1, max_elements // (sx * sy * sz))
        for c in range(0, count, step):
            _splat_chunk(grid, members[c:c + step], (sx, sy, sz), mu, a, log_opac, i0, i1, xs)
    return grid.view(res, res, res)


def _splat_chunk(grid: Tensor, g: Tensor, box: tuple[int, int, int], mu: Tensor, a: Tensor, log_opac: Tensor,
                 i0: Tensor, i1: Tensor, xs: Tensor) -> None:
    """Add Gaussians ``g`` (n,) at the points of their boxes, padded to ``box``, into the flat grid."""
    res = xs.numel()
    idx, d, pen = [], [], []
    for axis, n_pts in enumerate(box):
        o = i0[g, axis, None] + torch.arange(n_pts, device=grid.device)  # (n, s)
        valid = o <= i1[g, axis, None]
        o = o.clamp_max(res - 1)
        idx.append(o)
        d.append((xs[o] - mu[g, axis, None]).to(torch.float32))
        pen.append(torch.where(valid, 0.0, -float("inf")))
    (dx, dy, dz), ag = d, a[g] * -0.5
    # -q/2 + ln o = [A00 dx^2 + A11 dy^2 + 2 A01 dx dy] + 2 (A02 dx + A12 dy) dz + A22 dz^2 (A scaled by -1/2)
    # + ln o; box padding -> -inf -> exp 0
    xy = (ag[:, 0, 0, None, None] * (dx * dx)[:, :, None] + ag[:, 1, 1, None, None] * (dy * dy)[:, None, :]
          + 2 * ag[:, 0, 1, None, None] * dx[:, :, None] * dy[:, None, :]
          + (pen[0][:, :, None] + pen[1][:, None, :] + log_opac[g, None, None]))
    lin = 2 * (ag[:, 0, 2, None, None] * dx[:, :, None] + ag[:, 1, 2, None, None] * dy[:, None, :])
    z = ag[:, 2, 2, None] * dz * dz + pen[2]
    # exp of finite arguments below ~-88 takes a ~10x slower path on CPUs (-inf does not): below -75 (3e-33) -> -inf
    val = (xy[..., None] + z[:, None, None, :]).addcmul_(lin[..., None], dz[:, None, None, :])
    val = val.masked_fill_(val < -0.5 * _Q_MAX, -float("inf")).exp_()
    flat = (idx[0][:, :, None] * res + idx[1][:, None, :])[..., None] * res + idx[2][:, None, None, :]
    grid.index_add_(0, flat.reshape(-1), val.reshape(-1))


@torch.no_grad()
def density_grid_from_tensors(
    means: Tensor,
    covariances: Tensor,
    opacities: Tensor,
    resolution: int = 128,
    num_blocks: int = 16,
    opacity_threshold: float = 0.005,
    margin_blocks: float = 1.5,
    chunk_size: int = 512,
    cov_floor_voxels: float = 0.0,
    cull_sigma: float | None = None,
) -> tuple[Tensor, Tensor, float]:
    """Density of the Gaussian mixture on a resolution^3 grid over normalised [-1, 1]^3.

    Returns (grid (R,R,R) indexed [ix, iy, iz] on the device of ``means``, centre (3,), scale) where a normalised
    point p corresponds to the world point p / scale + centre.

    Blocks are culled hierarchically (x slab, then y row, then per block along z) and the blocks of one z row are
    evaluated together as one batched matmul (Gaussian lists padded with zero-opacity entries), so the Python loop
    runs num_blocks^2 times with a handful of large tensor ops each, not num_blocks^3 times with tiny ones.
    ``chunk_size`` bounds the Gaussians per block per step (memory: rows x 8^3 x chunk floats).
    ``cull_sigma=k`` (option, official None) evaluates each Gaussian only within Mahalanobis distance k (module
    docstring): the same blocks and centre rule, every dropped term below ``opacity * exp(-k^2/2)``.
    """
    if resolution < 2 or num_blocks < 1 or resolution % num_blocks != 0:
        raise ConfigError(
            f"mesh.resolution ({resolution}) must be >= 2 and divisible by mesh.num_blocks ({num_blocks})"
        )
    device = means.device
    opacities = opacities.reshape(-1)
    keep = opacities > opacity_threshold
    if not bool(keep.any()):
        raise NoSurfaceError(
            f"no Gaussian has opacity > mesh.opacity_threshold={opacity_threshold}; nothing to extract"
        )
    means = means[keep].to(torch.float64)
    cov = covariances[keep].to(torch.float64)

    centre, scale = normalisation(means, cov)
    voxel = 2.0 / (resolution - 1)
    if cov_floor_voxels < 0:
        raise ConfigError(f"mesh.cov_floor_voxels={cov_floor_voxels} must be >= 0")
    if cull_sigma is not None and not cull_sigma > 0:
        raise ConfigError(f"mesh.cull_sigma={cull_sigma} must be > 0 (or null: no cut-off, the official rule)")
    cov_n = cov * scale**2 + (cov_floor_voxels * voxel) ** 2 * torch.eye(3, dtype=cov.dtype, device=device)
    cov_n = 0.5 * (cov_n + cov_n.transpose(1, 2))
    a = torch.linalg.inv_ex(cov_n).inverse
    # A Gaussian thinner than FLAT_STD_VOXELS along some axis (only possible without the floor) is a delta sheet that
    # the grid samples cannot see (the official exact evaluation gives ~0 at every sample); its Sigma^-1 would make
    # the float32 expansion meaningless (cancellation), so it contributes nothing.
    min_var = torch.linalg.eigvalsh(cov_n)[:, 0]
    flat = ~torch.isfinite(a).all(-1).all(-1) | (min_var < (FLAT_STD_VOXELS * voxel) ** 2)
    a[flat] = torch.eye(3, dtype=a.dtype, device=device)
    n = means.shape[0]
    # index n is a padding Gaussian: opacity 0, so it contributes nothing
    mu_n = torch.cat([(means - centre) * scale, means.new_zeros(1, 3)])
    a = torch.cat([a, torch.eye(3, dtype=a.dtype, device=device)[None]]).to(torch.float32)
    opac = torch.cat([torch.where(flat, 0.0, opacities[keep].to(torch.float64)).to(torch.float32),
                      opacities.new_zeros(1, dtype=torch.float32)])

    xs = torch.linspace(-1.0, 1.0, resolution, dtype=torch.float64, device=device)
    per = resolution // num_blocks
    lo = xs[torch.arange(num_blocks, device=device) * per]
    hi = xs[torch.arange(num_blocks, device=device) * per + per - 1]
    mid = (lo + hi) / 2
    margin = margin_blocks * 2.0 / num_blocks
    offs = torch.stack(torch.meshgrid(*(torch.arange(per, device=device),) * 3, indexing="ij"), -1).reshape(-1, 3)
    phi = _monomials(((offs - (per - 1) / 2) * voxel).to(torch.float32))  # same for every block
    if cull_sigma is not None:
        grid = _splat_density(mu_n[:n], a[:n], opac[:n], cov_n.diagonal(dim1=1, dim2=2), xs, lo, hi, margin, per,
                              float(cull_sigma))
        return grid, centre.to(torch.float32), float(scale)
    grid = torch.zeros(resolution, resolution, resolution, dtype=torch.float32, device=device)

    def near(idx: Tensor, axis: int, b: int) -> Tensor:
        c = mu_n[idx, axis]
        return idx[(c >= lo[b] - margin) & (c <= hi[b] + margin)]

    all_idx = torch.arange(n, device=device)
    for bx in range(num_blocks):
        ix = near(all_idx, 0, bx)
        if ix.numel() == 0:
            continue
        for by in range(num_blocks):
            iy = near(ix, 1, by)
            if iy.numel() == 0:
                continue
            cz = mu_n[iy, 2]
            member = (cz[None] >= lo[:, None] - margin) & (cz[None] <= hi[:, None] + margin)  # (num_blocks, G)
            counts = member.sum(1)
            rows = torch.nonzero(counts).squeeze(1)
            if rows.numel() == 0:
                continue
            member, counts = member[rows], counts[rows]
            b_idx, g_idx = member.nonzero(as_tuple=True)
            slot = torch.arange(b_idx.numel(), device=device) - (torch.cumsum(counts, 0) - counts)[b_idx]
            padded = torch.full((rows.numel(), int(counts.max())), n, dtype=torch.long, device=device)
            padded[b_idx, slot] = iy[g_idx]
            block_c = torch.stack([mid[bx].expand(rows.numel()), mid[by].expand(rows.numel()), mid[rows]], -1)
            mu = (mu_n[padded] - block_c[:, None, :]).to(torch.float32)
            dens = _row_density(phi, mu, a[padded], opac[padded], chunk_size)  # (B, per^3)
            slab = grid[bx * per:(bx + 1) * per, by * per:(by + 1) * per].view(per, per, num_blocks, per)
            slab[:, :, rows] = dens.view(-1, per, per, per).permute(1, 2, 0, 3)
    return grid, centre.to(torch.float32), float(scale)


def density_grid(
    model: Any, resolution: int = 128, num_blocks: int = 16, opacity_threshold: float = 0.005,
    cov_floor_voxels: float = 0.0, cull_sigma: float | None = None,
) -> tuple[Tensor, Tensor, float]:
    """``density_grid_from_tensors`` for a GaussianModel (means, opacities, covariances())."""
    means, cov, opac = gaussian_tensors(model)
    return density_grid_from_tensors(means, cov, opac, resolution, num_blocks, opacity_threshold,
                                     cov_floor_voxels=cov_floor_voxels, cull_sigma=cull_sigma)


def fill_enclosed_cavities(vol: np.ndarray, iso: float) -> np.ndarray:
    """``vol`` with every enclosed below-``iso`` region (a cavity no ray from outside the grid reaches) raised above
    ``iso``, so marching cubes makes no surface around it.

    Why: the oracle supervises only what a camera sees, so the inside of a solid is often hollow where Gaussians are
    sparse; marching cubes then adds closed inner shells that no view shows, which only inflate the Chamfer
    distance and the face count. Cavities touching the grid boundary count as outside (as marching cubes sees them).
    """
    from scipy.ndimage import binary_fill_holes

    inside = vol >= iso
    holes = binary_fill_holes(inside) & ~inside
    if holes.any():
        vol = vol.copy()
        vol[holes] = np.float32(2.0 * iso)
    return vol


def marching_cubes(grid: Tensor, centre: Tensor, scale: float, iso: float = 1.0,
                   pad_grid: bool = False, fill_cavities: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Iso-surface of a [ix, iy, iz] grid over [-1,1]^3 in world coordinates: (v (V,3) float32, f (F,3) int64).

    Official (DG ``extract_mesh``): PyMCubes on the float32 grid as it is, so a surface touching the grid boundary
    stays open there. ``pad_grid=True`` (option) pads one empty voxel on every side, which closes it.
    Faces are oriented outwards (towards lower density). ``fill_cavities=True`` (option, official False): enclosed
    low-density regions are filled first (:func:`fill_enclosed_cavities`).
    """
    import mcubes

    res = grid.shape[0]
    vol = grid.detach().cpu().numpy()
    if fill_cavities:
        vol = fill_enclosed_cavities(vol, iso)
    if pad_grid:
        vol = np.pad(vol, 1, mode="constant", constant_values=0.0)
    v, f = mcubes.marching_cubes(vol, float(iso))
    if len(f) == 0:
        raise NoSurfaceError(
            f"no surface found at iso {iso} (max density {float(grid.max()):.3g}) - the Gaussians are too "
            "transparent/sparse; lower mesh.iso"
        )
    v = (v - (1.0 if pad_grid else 0.0)) / (res - 1) * 2.0 - 1.0
    v = v / scale + centre.detach().cpu().numpy().astype(np.float64)
    return v.astype(np.float32), np.asarray(f, dtype=np.int64)


def extract_mesh_from_tensors(
    means: Tensor,
    covariances: Tensor,
    opacities: Tensor,
    resolution: int = 128,
    num_blocks: int = 16,
    opacity_threshold: float = 0.005,
    iso: float = 1.0,
    cov_floor_voxels: float = 0.0,
    pad_grid: bool = False,
    cull_sigma: float | None = None,
    fill_cavities: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Grid + marching cubes on plain tensors -> raw (v (V,3) float32, f (F,3) int64); cleanup is its own step."""
    grid, centre, scale = density_grid_from_tensors(
        means, covariances, opacities, resolution, num_blocks, opacity_threshold, cov_floor_voxels=cov_floor_voxels,
        cull_sigma=cull_sigma,
    )
    return marching_cubes(grid, centre, scale, iso, pad_grid, fill_cavities)


def extract_mesh(
    model: Any,
    resolution: int = 128,
    iso: float = 1.0,
    num_blocks: int = 16,
    opacity_threshold: float = 0.005,
    cov_floor_voxels: float = 0.0,
    pad_grid: bool = False,
    cull_sigma: float | None = None,
    fill_cavities: bool = False,
) -> Mesh:
    """Mesh (vertex normals, no UV) of a GaussianModel's iso-surface, on the model's device.

    The raw marching-cubes surface: the pipeline runs :func:`cg_lightning.mesh.cleanup.clean_mesh` as its own step.
    """
    means, cov, opac = gaussian_tensors(model)
    v, f = extract_mesh_from_tensors(means, cov, opac, resolution, num_blocks, opacity_threshold, iso,
                                     cov_floor_voxels, pad_grid, cull_sigma, fill_cavities)
    dev = means.device
    mesh = Mesh(v=torch.from_numpy(v).to(dev), f=torch.from_numpy(f).to(dev))
    return mesh.auto_normals()
