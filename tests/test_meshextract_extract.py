"""Density grid and marching cubes against analytic Gaussian configurations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cg_lightning.errors import CGError, ConfigError
from cg_lightning.mesh.extract import (
    FLAT_STD_VOXELS,
    NoSurfaceError,
    covariances_from_scales_rotations,
    density_grid,
    density_grid_from_tensors,
    extract_mesh,
    extract_mesh_from_tensors,
    marching_cubes,
)

CENTRE = torch.tensor([0.3, -0.2, 0.1])
SIGMAS = torch.tensor([0.25, 0.15, 0.10])  # distinct per axis: catches any x/y/z mix-up
K, OPACITY = 4, 0.8  # K coincident Gaussians: peak density K*o = 3.2 > iso 1
ANCHOR = 0.8  # faint tiny Gaussians at CENTRE +- ANCHOR fix the normalisation (extent 1.6 on every axis)


def blob(anchor_opacity: float = 0.01) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Anisotropic off-centre blob whose iso-1 surface is the ellipsoid with semi-axes SIGMAS*sqrt(2 ln(K o))."""
    corners = torch.tensor([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=torch.float32)
    means = torch.cat([CENTRE.expand(K, 3), CENTRE + ANCHOR * corners])
    cov = torch.cat([torch.diag(SIGMAS**2).expand(K, 3, 3), (0.01**2 * torch.eye(3)).expand(8, 3, 3)])
    opac = torch.cat([torch.full((K,), OPACITY), torch.full((8,), anchor_opacity)])
    return means, cov, opac


def semi_axes(iso: float = 1.0) -> torch.Tensor:
    return SIGMAS * math.sqrt(2 * math.log(K * OPACITY / iso))


def bruteforce_grid(means, cov, opac, resolution, num_blocks, threshold=0.005, margin_blocks=1.5,
                    floor_voxels=0.0, cull_sigma=None) -> torch.Tensor:
    """float64 reference with the same normalisation, covariance floor and block culling; Gaussians flatter than
    FLAT_STD_VOXELS (a delta sheet) are left out, as the implementation does. ``cull_sigma=k`` keeps each Gaussian
    only at the points of its k-sigma box (|p_j - mu_j| <= k sqrt(Sigma_jj))."""
    keep = opac > threshold
    means, cov, opac = means[keep].double(), cov[keep].double(), opac[keep].double()
    lo, hi = means.min(0).values, means.max(0).values
    centre, scale = (lo + hi) / 2, 1.8 / float((hi - lo).max())
    mu = (means - centre) * scale
    voxel = 2.0 / (resolution - 1)
    cov_n = cov * scale**2 + (floor_voxels * voxel) ** 2 * torch.eye(3, dtype=torch.float64)
    flat = torch.linalg.eigvalsh(cov_n)[:, 0] < (FLAT_STD_VOXELS * voxel) ** 2
    opac = torch.where(flat, 0.0, opac)
    a = torch.linalg.inv(torch.where(flat[:, None, None], torch.eye(3, dtype=torch.float64), cov_n))
    xs = torch.linspace(-1, 1, resolution, dtype=torch.float64)
    idx = torch.stack(torch.meshgrid(*(torch.arange(resolution),) * 3, indexing="ij"), -1).reshape(-1, 3)
    p = xs[idx]
    per = resolution // num_blocks
    blk = idx // per
    blo, bhi = xs[blk * per], xs[blk * per + per - 1]
    margin = margin_blocks * 2.0 / num_blocks
    inside = ((mu[None] >= blo[:, None] - margin) & (mu[None] <= bhi[:, None] + margin)).all(-1)
    d = p[:, None, :] - mu[None]
    q = torch.einsum("pgi,gij,pgj->pg", d, a, d)
    if cull_sigma is not None:  # the grid points of each Gaussian's k-sigma box
        inside &= (d.abs() <= cull_sigma * cov_n.diagonal(dim1=1, dim2=2).sqrt()).all(-1)
    dens = (torch.exp(-0.5 * q) * opac * inside).sum(1)
    return dens.reshape(resolution, resolution, resolution)


def test_density_matches_float64_reference_with_culling():
    g = torch.Generator().manual_seed(0)
    n = 150
    means = torch.rand(n, 3, generator=g) * 2 - 1
    scales = torch.exp(torch.empty(n, 3).uniform_(math.log(0.01), math.log(0.2), generator=g))
    scales[0, 2] = 0.0  # a degenerate (flat) Gaussian must not blow up
    rot = torch.randn(n, 4, generator=g)
    opac = torch.rand(n, generator=g)
    cov = covariances_from_scales_rotations(scales, rot)
    grid, centre, scale = density_grid_from_tensors(means, cov, opac, resolution=20, num_blocks=4)
    ref = bruteforce_grid(means, cov, opac, 20, 4)
    assert grid.shape == (20, 20, 20) and grid.dtype == torch.float32
    assert torch.isfinite(grid).all()
    assert float(ref.max()) > 1.0  # the comparison covers dense regions
    torch.testing.assert_close(grid.double(), ref, atol=2e-4, rtol=1e-4)
    keep = opac > 0.005
    lo, hi = means[keep].min(0).values, means[keep].max(0).values
    torch.testing.assert_close(centre, (lo + hi) / 2)
    assert scale == pytest.approx(1.8 / float((hi - lo).max()), rel=1e-6)


def test_culling_drops_only_far_gaussians():
    """With Gaussians small against the culling margin the blocked grid equals the full (unculled) sum."""
    means, cov, opac = blob()
    cov = cov * 0.05  # sigma <= 0.056 world = 0.063 normalised << margin 0.375
    grid, _, _ = density_grid_from_tensors(means, cov, opac, resolution=32, num_blocks=8)
    full = bruteforce_grid(means, cov, opac, 32, 8, margin_blocks=100.0)
    torch.testing.assert_close(grid.double(), full, atol=1e-5, rtol=1e-4)


def _random_cloud(n: int, seed: int, max_scale: float = 0.2):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g) * 2 - 1
    scales = torch.exp(torch.empty(n, 3).uniform_(math.log(0.005), math.log(max_scale), generator=g))
    scales[0, 2] = 0.0  # a flat Gaussian: left out like the official path does
    cov = covariances_from_scales_rotations(scales, torch.randn(n, 4, generator=g))
    return means, cov, torch.rand(n, generator=g)


@pytest.mark.parametrize("k", [1.5, 3.0])
def test_sigma_cut_matches_reference_with_the_same_cut(k):
    """cull_sigma=k: exactly the official sum (same blocks, same centre rule) without the terms outside each
    Gaussian's k-sigma box, including Gaussians larger than the block margin (boxes clipped to the blocks they may
    reach)."""
    means, cov, opac = _random_cloud(150, 1, max_scale=0.4)
    grid, centre, scale = density_grid_from_tensors(means, cov, opac, resolution=24, num_blocks=4, cull_sigma=k)
    ref = bruteforce_grid(means, cov, opac, 24, 4, cull_sigma=k)
    assert float(ref.max()) > 1.0
    torch.testing.assert_close(grid.double(), ref, atol=2e-5, rtol=1e-5)
    _, c_off, s_off = density_grid_from_tensors(means, cov, opac, resolution=24, num_blocks=4)
    torch.testing.assert_close(centre, c_off)
    assert scale == s_off


def test_sigma_cut_error_is_bounded_by_the_dropped_tail():
    """Against the official rule (no cut-off) each point loses less than sum of o_i exp(-k^2/2) over the Gaussians
    its block sees, and at k=4 the marching-cubes surface of an ellipsoid does not move."""
    means, cov, opac = _random_cloud(200, 2)
    official = bruteforce_grid(means, cov, opac, 20, 4)  # float64, no cut
    cut, _, _ = density_grid_from_tensors(means, cov, opac, resolution=20, num_blocks=4, cull_sigma=3.0)
    lost = official - cut.double()
    assert float(lost.min()) > -2e-5  # only drops terms (float32 rounding aside)
    assert float(lost.max()) <= float(opac.sum()) * math.exp(-4.5)
    assert float(lost.max()) > 1e-3  # the cut does drop something here
    m, c, o = blob()
    v_off, f_off = extract_mesh_from_tensors(m, c, o, resolution=40, num_blocks=4)
    v_cut, f_cut = extract_mesh_from_tensors(m, c, o, resolution=40, num_blocks=4, cull_sigma=4.0)
    assert f_cut.shape == f_off.shape
    np.testing.assert_allclose(v_cut, v_off, atol=1e-4)


def test_sigma_cut_rejects_non_positive_values():
    means, cov, opac = blob()
    with pytest.raises(ConfigError, match="cull_sigma"):
        density_grid_from_tensors(means, cov, opac, resolution=16, num_blocks=4, cull_sigma=0.0)


def test_opacity_filter_excludes_gaussians_from_normalisation():
    means, cov, opac = blob(anchor_opacity=0.004)  # anchors below the 0.005 threshold
    _, centre, scale = density_grid_from_tensors(means, cov, opac, resolution=16, num_blocks=4)
    # only the coincident blob is left: degenerate extent -> 3-sigma box of the blob
    torch.testing.assert_close(centre, CENTRE, atol=1e-6, rtol=0)
    assert scale == pytest.approx(1.8 / float(6 * SIGMAS.max()), rel=1e-5)


def test_ellipsoid_recovered_in_world_coordinates():
    means, cov, opac = blob()
    grid, centre, scale = density_grid_from_tensors(means, cov, opac, resolution=64, num_blocks=4)
    assert scale == pytest.approx(1.8 / (2 * ANCHOR), rel=1e-6)
    v, f = marching_cubes(grid, centre, scale, iso=1.0)
    axes = semi_axes()
    vt = torch.from_numpy(v)
    torch.testing.assert_close(vt.min(0).values, CENTRE - axes, atol=6e-3, rtol=0)
    torch.testing.assert_close(vt.max(0).values, CENTRE + axes, atol=6e-3, rtol=0)
    # every vertex on the analytic ellipsoid
    r = (((vt - CENTRE) / axes) ** 2).sum(1).sqrt()
    assert float((r - 1).abs().max()) < 0.02

    import trimesh

    tm = trimesh.Trimesh(v, f, process=False)
    assert tm.is_watertight
    expected = 4 / 3 * math.pi * float(axes.prod())
    assert tm.volume > 0  # outward-facing triangles
    assert tm.volume == pytest.approx(expected, rel=0.03)


def test_grid_padding_option_closes_surface_at_grid_boundary():
    """Where the density exceeds iso on the boundary of [-1,1]^3 the official surface stays open there;
    ``pad_grid=True`` closes it without moving the vertices of the rest of the surface."""
    import trimesh

    means = torch.zeros(3, 3)
    means[1, 0], means[2, 0] = -0.5, 0.5
    cov = (0.4**2 * torch.eye(3)).expand(3, 3, 3).clone()
    grid, centre, scale = density_grid_from_tensors(means, cov, torch.full((3,), 0.9), resolution=16, num_blocks=2)
    assert float(grid[0].max()) > 1.0
    v, f = marching_cubes(grid, centre, scale, iso=1.0)
    assert not trimesh.Trimesh(v, f, process=False).is_watertight
    vp, fp = marching_cubes(grid, centre, scale, iso=1.0, pad_grid=True)
    assert trimesh.Trimesh(vp, fp, process=False).is_watertight
    inner = {tuple(np.round(x, 5)) for x in v}
    assert inner <= {tuple(np.round(x, 5)) for x in vp}  # padding only adds the caps


def test_covariance_floor_option_thickens_thin_gaussians():
    """Without the floor (official) very thin Gaussians fall between the samples; the 0.1-voxel floor keeps them."""
    g = torch.Generator().manual_seed(3)
    n = 40
    means = torch.rand(n, 3, generator=g) * 1.6 - 0.8
    scales = torch.tensor([0.3, 0.3, 0.002]).expand(n, 3).clone()  # thin discs, well below a voxel (0.1 world)
    cov = covariances_from_scales_rotations(scales, torch.randn(n, 4, generator=g))
    opac = torch.full((n,), 0.9)
    plain, _, _ = density_grid_from_tensors(means, cov, opac, resolution=20, num_blocks=4)
    floored, _, _ = density_grid_from_tensors(means, cov, opac, resolution=20, num_blocks=4, cov_floor_voxels=0.1)
    # Sigma^-1 ~ 1e5 here: the float32 monomial expansion loses ~eps32 * |A| * |p|^2 ~ 2e-3 of the exponent
    torch.testing.assert_close(plain.double(), bruteforce_grid(means, cov, opac, 20, 4), atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(floored.double(), bruteforce_grid(means, cov, opac, 20, 4, floor_voxels=0.1),
                               atol=2e-4, rtol=1e-4)
    assert float(floored.sum()) > 1.5 * float(plain.sum())
    with pytest.raises(ConfigError, match="cov_floor_voxels"):
        density_grid_from_tensors(means, cov, opac, resolution=20, num_blocks=4, cov_floor_voxels=-1.0)


def test_no_surface_errors_are_clear():
    means, cov, opac = blob()
    with pytest.raises(NoSurfaceError, match="opacity"):
        density_grid_from_tensors(means, cov, torch.full_like(opac, 0.001), resolution=16, num_blocks=4)
    with pytest.raises(NoSurfaceError, match=r"no surface found at iso 5.*lower mesh.iso"):
        extract_mesh_from_tensors(means, cov, opac, resolution=16, num_blocks=4, iso=5.0)
    assert issubclass(NoSurfaceError, CGError)
    with pytest.raises(ConfigError, match="divisible"):
        density_grid_from_tensors(means, cov, opac, resolution=30, num_blocks=4)


def test_lower_iso_gives_larger_surface():
    means, cov, opac = blob()
    sizes = []
    for iso in (2.0, 1.0, 0.5):
        v, _ = extract_mesh_from_tensors(means, cov, opac, resolution=32, num_blocks=4, iso=iso)
        sizes.append(float(v[:, 0].max() - v[:, 0].min()))
        assert sizes[-1] == pytest.approx(2 * float(semi_axes(iso)[0]), abs=0.05)  # voxel = 0.057
    assert sizes[0] < sizes[1] < sizes[2]


def test_gaussian_model_wrapper_and_mesh():
    from cg_lightning.gaussians.model import GaussianModel, inverse_sigmoid

    g = torch.Generator().manual_seed(1)
    n = 60
    xyz = torch.randn(n, 3, generator=g) * 0.2
    scaling = torch.log(torch.rand(n, 3, generator=g) * 0.1 + 0.05)
    rotation = torch.randn(n, 4, generator=g)
    opacity = inverse_sigmoid(torch.rand(n, 1, generator=g) * 0.8 + 0.1)
    model = GaussianModel(xyz, torch.zeros(n, 1, 3), torch.zeros(n, 0, 3), opacity, scaling, rotation)
    grid, centre, scale = density_grid(model, resolution=32, num_blocks=4)
    cov = covariances_from_scales_rotations(scaling.exp(), rotation)
    ref, ref_c, ref_s = density_grid_from_tensors(xyz, cov, torch.sigmoid(opacity), resolution=32, num_blocks=4)
    torch.testing.assert_close(grid, ref, atol=1e-5, rtol=1e-4)
    assert scale == pytest.approx(ref_s)

    mesh = extract_mesh(model, resolution=32, num_blocks=4, iso=1.0)
    assert mesh.num_faces > 100 and mesh.vn is not None
    torch.testing.assert_close(mesh.vn.norm(dim=1), torch.ones(mesh.num_vertices), atol=1e-4, rtol=0)
    # the surface encloses the dense core of the Gaussians
    assert bool((mesh.v.min(0).values < xyz.median(0).values).all())
    assert bool((mesh.v.max(0).values > xyz.median(0).values).all())


def test_extract_with_cleanup_keeps_ellipsoid():
    means, cov, opac = blob()
    from cg_lightning.mesh.cleanup import clean_mesh

    v, f = clean_mesh(*extract_mesh_from_tensors(means, cov, opac, resolution=48, num_blocks=4), remesh_size=0.03)
    axes = semi_axes()
    r = (((torch.from_numpy(v) - CENTRE) / axes) ** 2).sum(1).sqrt()
    assert float((r - 1).abs().max()) < 0.05
    assert f.dtype == np.int64 and v.dtype == np.float32


@pytest.mark.gpu
def test_density_grid_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    means, cov, opac = blob()
    cpu, c_cpu, s_cpu = density_grid_from_tensors(means, cov, opac, resolution=64, num_blocks=8)
    gpu, c_gpu, s_gpu = density_grid_from_tensors(means.cuda(), cov.cuda(), opac.cuda(), resolution=64, num_blocks=8)
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)
    assert s_gpu == pytest.approx(s_cpu)
