"""Metrics against the ground truth, for jobs whose prior knows the true object (``prior=oracle`` / ``oracle_noisy``).

Why: LPIPS / CLIP similarity compare the result with the *input picture*; only a known object says whether the 3D
shape and the unseen sides are right. Definitions (experiments/README.md, "Ground-truth benchmark"):

- geometry, from ``samples`` area-uniform surface points on each mesh (fixed seeds), each matched to the nearest of
  5 x ``samples`` points on the other surface (sampling floor: ~0.003 for a perfect mesh at 20k samples):
  ``chamfer`` = mean of both directed mean nearest-neighbour distances, in world units (objects span ~1.2);
  ``fscore_1pct`` / ``fscore_2pct`` = harmonic mean of precision (predicted points within tau of the truth) and
  recall (true points within tau of the prediction), tau = 1 % / 2 % of the true object's size (longest side of its
  bounding box); ``normal_consistency`` = mean |cos| between each point's face normal and that of its nearest
  neighbour on the other mesh, both directions (1 = perfect, orientation-agnostic);
- appearance, at 16 fixed views (azimuths 0, 45, ..., 315 at elevations 0 and -30, radius 2, fovy 49.1, on white):
  ``psnr`` over the whole image, ``masked_psnr`` over pixels covered by the truth or the prediction, ``ssim``
  (Gaussian window 11, sigma 1.5, on the whole image).

Keys: ``eval/truth_<what>_<metric>`` with ``<what>`` = ``coarse`` (baked mesh), ``final`` (stage-2 mesh) and
``stage1`` (the Gaussians; appearance only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cg_lightning.cameras import Camera, orbit
from cg_lightning.evaluation.render_memo import RenderMemo
from cg_lightning.mesh.mesh import Mesh

#: a renderer of one thing: camera -> (image (3,H,W) on white, coverage (1,H,W))
RenderFn = Callable[[Camera], tuple[Tensor, Tensor]]

FSCORE_FRACTIONS = (0.01, 0.02)
REFERENCE_DENSITY = 5


# ---------------------------------------------------------------------------------------------- geometry
def sample_surface(mesh: Mesh, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` area-uniform points on the triangles (float64) and their unit face normals."""
    v = mesh.v.detach().cpu().numpy().astype(np.float64)
    f = mesh.f.cpu().numpy()
    tri = v[f]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = 0.5 * np.linalg.norm(cross, axis=1)
    if len(f) == 0 or area.sum() <= 0:
        raise ValueError("cannot sample the surface of a mesh without area")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(f), size=n, p=area / area.sum())
    u, w = rng.random(n), rng.random(n)
    flip = u + w > 1
    u[flip], w[flip] = 1 - u[flip], 1 - w[flip]
    t = tri[idx]
    points = t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + w[:, None] * (t[:, 2] - t[:, 0])
    normals = cross[idx] / np.maximum(2 * area[idx], 1e-30)[:, None]
    return points, normals


def object_size(mesh: Mesh) -> float:
    """Longest side of the axis-aligned bounding box (the unit of the F-score thresholds)."""
    lo, hi = mesh.bounds()
    return float((hi - lo).max())


@dataclass
class SurfaceSamples:
    """A mesh's query points and its denser reference points with a KD-tree (made once per mesh and job)."""

    points: np.ndarray
    normals: np.ndarray
    ref_points: np.ndarray
    ref_normals: np.ndarray
    tree: object   # scipy cKDTree over ref_points


def surface_samples(mesh: Mesh, samples: int, seeds: tuple[int, int]) -> SurfaceSamples:
    """``samples`` query points (seed ``seeds[0]``) and REFERENCE_DENSITY x as many reference points (``seeds[1]``)."""
    from scipy.spatial import cKDTree

    points, normals = sample_surface(mesh, samples, seed=seeds[0])
    ref_points, ref_normals = sample_surface(mesh, REFERENCE_DENSITY * samples, seed=seeds[1])
    return SurfaceSamples(points, normals, ref_points, ref_normals, cKDTree(ref_points))


#: seeds of the prediction's and the truth's samples (query, reference)
PRED_SEEDS, TRUTH_SEEDS = (0, 2), (1, 3)


def geometry_metrics(pred: Mesh, truth: Mesh, samples: int = 20000,
                     fractions: Sequence[float] = FSCORE_FRACTIONS,
                     truth_samples: SurfaceSamples | None = None) -> dict[str, float]:
    """Chamfer distance, F-scores at ``fractions`` of the true object's size, normal consistency (keys unprefixed).

    ``truth_samples`` (from :func:`surface_samples` with ``TRUTH_SEEDS`` and the same ``samples``) lets several
    predictions share the truth's points and KD-tree; the figures are the same as without it."""
    p = surface_samples(pred, samples, PRED_SEEDS)
    t = truth_samples if truth_samples is not None else surface_samples(truth, samples, TRUTH_SEEDS)
    if len(t.points) != samples:
        raise ValueError(f"truth_samples hold {len(t.points)} points, expected samples={samples}")
    # each direction queries `samples` points against REFERENCE_DENSITY x as many on the other surface, so that the
    # sampling floor (a perfect mesh's distance) stays well below the 1 % threshold
    d_pt, i_pt = t.tree.query(p.points)  # prediction -> truth (accuracy)
    d_tp, i_tp = p.tree.query(t.points)  # truth -> prediction (completeness)
    tn_near, pn_near = t.ref_normals[i_pt], p.ref_normals[i_tp]
    out = {"chamfer": float(0.5 * (d_pt.mean() + d_tp.mean()))}
    size = object_size(truth)
    for frac in fractions:
        tau = frac * size
        precision, recall = float((d_pt < tau).mean()), float((d_tp < tau).mean())
        f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
        out[f"fscore_{round(frac * 100):d}pct"] = f
    nc = 0.5 * (np.abs((p.normals * tn_near).sum(1)).mean() + np.abs((t.normals * pn_near).sum(1)).mean())
    out["normal_consistency"] = float(nc)
    return out


# ---------------------------------------------------------------------------------------------- appearance
def fixed_views(n_azimuths: int = 8, elevations: Sequence[float] = (0.0, -30.0)) -> list[tuple[float, float]]:
    """The 16 (elevation, azimuth) pairs every job is scored at (DreamGaussian sign: -30 = seen from above)."""
    return [(float(e), float(a)) for e in elevations for a in np.linspace(0.0, 360.0, n_azimuths, endpoint=False)]


def _gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float32) -> Tensor:
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM of two (3,H,W) images in [0,1] (Wang et al. 2004: Gaussian window, K1 0.01, K2 0.03, valid region)."""
    c1, c2 = 0.01**2, 0.03**2
    w = _gaussian_window(window, sigma, a.dtype).to(a.device).expand(a.shape[0], 1, window, window)

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(x[None], w, groups=a.shape[0])[0]

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def psnr_from_mse(mse: float) -> float:
    return float(10.0 * np.log10(1.0 / max(mse, 1e-12)))


@torch.no_grad()
def appearance_metrics(render_pred: RenderFn, render_truth: RenderFn, views: Sequence[tuple[float, float]],
                       size: int = 256, radius: float = 2.0, fovy_deg: float = 49.1) -> dict[str, float]:
    """PSNR / masked PSNR (MSE pooled over the views) and mean SSIM of the prediction against the truth."""
    sq_sum, n_pix, masked_sum, masked_n, ssims = 0.0, 0, 0.0, 0, []
    for elevation, azimuth in views:
        cam = orbit(elevation, azimuth, radius, fovy_deg, size, size)
        a, alpha_a = render_pred(cam)
        b, alpha_b = render_truth(cam)
        a, b = a.float().cpu().clamp(0, 1), b.float().cpu().clamp(0, 1)
        err = ((a - b) ** 2).mean(0)
        sq_sum += float(err.sum())
        n_pix += err.numel()
        mask = (torch.maximum(alpha_a.float().cpu(), alpha_b.float().cpu())[0] > 0.5)
        masked_sum += float(err[mask].sum())
        masked_n += int(mask.sum())
        ssims.append(ssim(a, b))
    return {"psnr": psnr_from_mse(sq_sum / n_pix),
            "masked_psnr": psnr_from_mse(masked_sum / masked_n) if masked_n else float("nan"),
            "ssim": float(np.mean(ssims))}


def mesh_render_fn(mesh: Mesh, rasterizer) -> RenderFn:
    from cg_lightning.render.mesh import render_mesh

    white = torch.ones(3)

    def render(cam: Camera) -> tuple[Tensor, Tensor]:
        out = render_mesh(mesh, cam, rasterizer, white)
        return out.image, out.alpha

    return render


def gaussian_render_fn(model, rasterizer) -> RenderFn:
    def render(cam: Camera) -> tuple[Tensor, Tensor]:
        out = rasterizer.render(model, cam, torch.ones(3))
        return out.image, out.alpha

    return render


# ---------------------------------------------------------------------------------------------- one job
def truth_metrics(truth: Mesh, *, coarse: Mesh | None = None, final: Mesh | None = None,
                  gaussians: RenderFn | None = None, rasterizer=None, samples: int = 20000, size: int = 256,
                  views: Sequence[tuple[float, float]] | None = None, memo: RenderMemo | None = None,
                  gaussians_tag: object = None) -> dict[str, float]:
    """Every ground-truth metric of one job's outputs, keyed ``eval/truth_<what>_<metric>``.

    The truth is rendered and sampled once for all the things scored. ``memo`` (the job's
    :class:`~cg_lightning.evaluation.render_memo.RenderMemo`) reuses renders the export step already made of the same
    things at the same cameras (``stage1`` under ``gaussians_tag``, ``final`` and ``coarse`` under the mesh
    rasterizer's tag)."""
    if rasterizer is None:
        from cg_lightning.render.mesh import build_mesh_rasterizer

        rasterizer = build_mesh_rasterizer("torch")
    memo = memo if memo is not None else RenderMemo()
    tag = renderer_tag(rasterizer, "cpu")
    views = list(views) if views is not None else fixed_views()
    truth = truth.to("cpu")
    render_truth = memo.wrap("truth", tag, mesh_render_fn(truth, rasterizer))
    out: dict[str, float] = {}
    if gaussians is not None:
        render = memo.wrap("stage1", gaussians_tag, gaussians) if gaussians_tag is not None else gaussians
        for k, v in appearance_metrics(render, render_truth, views, size).items():
            out[f"eval/truth_stage1_{k}"] = v
    truth_samples = None
    for what, mesh in (("coarse", coarse), ("final", final)):
        if mesh is None:
            continue
        mesh = mesh.to("cpu")
        if truth_samples is None:
            truth_samples = surface_samples(truth, samples, TRUTH_SEEDS)
        for k, v in geometry_metrics(mesh, truth, samples, truth_samples=truth_samples).items():
            out[f"eval/truth_{what}_{k}"] = v
        render = memo.wrap(what, tag, mesh_render_fn(mesh, rasterizer))
        for k, v in appearance_metrics(render, render_truth, views, size).items():
            out[f"eval/truth_{what}_{k}"] = v
    return out


def renderer_tag(rasterizer, device: torch.device | str) -> tuple[str, str]:
    """What identifies a renderer for :class:`RenderMemo`: its class and the device its renders are made on."""
    return type(rasterizer).__name__, str(torch.device(device))
