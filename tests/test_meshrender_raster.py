"""Torch mesh rasterizer vs analytic renders of simple scenes, gradients, and nvdiffrast parity (GPU only)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cg_lightning.cameras import orbit
from cg_lightning.errors import CGError, ConfigError
from cg_lightning.render.mesh import TorchMeshRasterizer, build_mesh_rasterizer, estimate_uv_da
from cg_lightning.render.mesh.base import cuda_nvdiffrast_available, mip_level_from_uv_da
from cg_lightning.render.mesh.torch_backend import mip_pyramid


@pytest.fixture(scope="module")
def rast() -> TorchMeshRasterizer:
    return TorchMeshRasterizer()


def pixel_centres(h: int, w: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """NDC x (columns) and y (rows) of every pixel centre, (H,W) each."""
    ys = (2 * torch.arange(h, dtype=dtype) + 1) / h - 1
    xs = (2 * torch.arange(w, dtype=dtype) + 1) / w - 1
    return torch.meshgrid(xs, ys, indexing="xy")


def analytic_barycentrics(p2: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Screen-space barycentrics (H,W,3) of a 2D triangle p2 (3,2) at points (x, y)."""
    (x0, y0), (x1, y1), (x2, y2) = p2.tolist()
    det = (y1 - y2) * (x0 - x2) + (x2 - x1) * (y0 - y2)
    l0 = ((y1 - y2) * (x - x2) + (x2 - x1) * (y - y2)) / det
    l1 = ((y2 - y0) * (x - x2) + (x0 - x2) * (y - y2)) / det
    return torch.stack([l0, l1, 1 - l0 - l1], -1)


def test_single_triangle_coverage_barycentrics_depth(rast):
    p2 = torch.tensor([[-0.7, -0.6], [0.8, -0.3], [-0.1, 0.9]], dtype=torch.float64)
    pos = torch.cat([p2, torch.full((3, 1), 0.25, dtype=torch.float64), torch.ones(3, 1, dtype=torch.float64)], 1)
    out = rast.rasterize(pos[None], torch.tensor([[0, 1, 2]], dtype=torch.int32), (37, 53))[0]
    x, y = pixel_centres(37, 53)
    lam = analytic_barycentrics(p2, x, y)
    inside = (lam >= 0).all(-1)
    assert inside.sum() > 300
    assert torch.equal(out[..., 3] > 0, inside)
    assert torch.all(out[..., 3][inside] == 1)
    torch.testing.assert_close(out[..., 0][inside], lam[..., 0][inside], atol=1e-9, rtol=0)
    torch.testing.assert_close(out[..., 1][inside], lam[..., 1][inside], atol=1e-9, rtol=0)
    torch.testing.assert_close(out[..., 2][inside], torch.full_like(out[..., 2][inside], 0.25))
    assert torch.all(out[~inside] == 0)


def test_perspective_correct_interpolation_on_tilted_quad(rast):
    """Interpolated world positions of a tilted quad equal the camera-ray / plane intersections."""
    cam = orbit(0.0, 0.0, 2.0, width=48, height=40)
    v = torch.tensor([[-0.6, -0.5, -0.45], [0.6, -0.5, 0.45], [0.6, 0.5, 0.45], [-0.6, 0.5, -0.45]],
                     dtype=torch.float64)  # plane z = 0.75 x, strongly slanted in depth
    f = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    mvp = cam.mvp_gl.double()
    pos = (F.pad(v, (0, 1), value=1.0) @ mvp.T)[None]
    out = rast.rasterize(pos, f, (40, 48))
    world = rast.interpolate(v, out, f)[0]
    covered = out[0, ..., 3] > 0
    # analytic: ray from the camera through each pixel centre; row 0 is the top (NDC y = -1 maps to +y in view)
    x, y = pixel_centres(40, 48)
    t = math.tan(cam.fovy / 2)
    d = torch.stack([x * t * 48 / 40, -y * t, -torch.ones_like(x)], -1)  # camera frame = world frame here
    o = torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64)
    s = (0.75 * o[0] - o[2]) / (d[..., 2] - 0.75 * d[..., 0])
    hit = o + s[..., None] * d
    expect = (hit[..., 0].abs() <= 0.6) & (hit[..., 1].abs() <= 0.5)
    margin = ((hit[..., 0].abs() - 0.6).abs() < 0.02) | ((hit[..., 1].abs() - 0.5).abs() < 0.02)
    assert covered.sum() > 600
    assert torch.equal(covered[~margin], expect[~margin])
    torch.testing.assert_close(world[covered], hit[covered], atol=1e-6, rtol=0)  # float32 camera matrices
    # z/w of the hit through the projection matrix
    clip = F.pad(hit, (0, 1), value=1.0) @ mvp.T
    torch.testing.assert_close(out[0, ..., 2][covered], (clip[..., 2] / clip[..., 3])[covered], atol=1e-9, rtol=0)
    # screen-linear interpolation would be off by far more than the tolerance
    u, vv = out[0, ..., 0], out[0, ..., 1]
    assert (u[covered] - (u[covered] + vv[covered]) / 2).abs().max() > 0.01  # sanity: non-trivial barycentrics


def test_nearest_triangle_wins_regardless_of_order(rast):
    near = [[-0.5, -0.5, 0.1, 1.0], [0.5, -0.5, 0.1, 1.0], [0.0, 0.5, 0.1, 1.0]]
    far = [[-0.6, -0.6, 0.5, 1.0], [0.6, -0.6, 0.5, 1.0], [0.0, 0.6, 0.5, 1.0]]
    for order in ([near, far], [far, near]):
        pos = torch.tensor([order[0] + order[1]])
        out = rast.rasterize(pos, torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32), (32, 32))
        near_id = 1 if order[0] is near else 2
        centre = out[0, 16, 16]
        assert int(centre[3]) == near_id and abs(float(centre[2]) - 0.1) < 1e-6


def test_shared_diagonal_is_watertight(rast):
    """Pixel centres exactly on the shared edge must be covered (no holes between adjacent triangles)."""
    pos = torch.tensor([[[-1.0, -1.0, 0.0, 1.0], [1.0, -1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 1.0], [-1.0, 1.0, 0.0, 1.0]]])
    out = rast.rasterize(pos, torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32), (16, 16))
    assert bool((out[..., 3] > 0).all())


def test_triangle_behind_camera_is_dropped_and_crossing_triangle_is_exact(rast):
    cam = orbit(0.0, 0.0, 2.0, width=32, height=32)
    mvp = cam.mvp_gl.double()
    behind = torch.tensor([[-0.5, -0.5, 3.0], [0.5, -0.5, 3.0], [0.0, 0.5, 3.0]], dtype=torch.float64)
    pos = (F.pad(behind, (0, 1), value=1.0) @ mvp.T)[None]
    assert float(rast.rasterize(pos, torch.tensor([[0, 1, 2]]), (32, 32))[..., 3].abs().sum()) == 0.0
    # a floor y = -0.5 from z = 5 (behind the camera at z = 2) to z = -5: crosses the camera plane
    floor = torch.tensor([[-50.0, -0.5, 5.0], [50.0, -0.5, 5.0], [50.0, -0.5, -5.0], [-50.0, -0.5, -5.0]],
                         dtype=torch.float64)
    f = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    pos = (F.pad(floor, (0, 1), value=1.0) @ mvp.T)[None]
    out = rast.rasterize(pos, f, (32, 32))
    world = rast.interpolate(floor, out, f)[0]
    covered = out[0, ..., 3] > 0
    x, y = pixel_centres(32, 32)
    t = math.tan(cam.fovy / 2)
    d = torch.stack([x * t, -y * t, -torch.ones_like(x)], -1)
    s = -0.5 / d[..., 1]  # camera at height 0
    hit_z = 2.0 + s * d[..., 2]
    expect = (d[..., 1] < 0) & (hit_z >= -5.0)
    margin = (hit_z + 5.0).abs() < 0.05
    assert covered.sum() > 100 and torch.equal(covered[~margin], expect[~margin])
    torch.testing.assert_close(world[..., 2][covered], hit_z[covered], atol=1e-5, rtol=0)  # float32 camera


def test_interpolate_broadcast_and_batched_attributes(rast):
    pos = torch.tensor([[[-0.8, -0.8, 0.0, 1.0], [0.8, -0.8, 0.0, 1.0], [0.0, 0.8, 0.0, 1.0]]]).repeat(2, 1, 1)
    pos[1, :, :2] *= 0.5
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    out = rast.rasterize(pos, tri, (16, 16))
    attr = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    a = rast.interpolate(attr, out, tri)
    torch.testing.assert_close(a, out[..., :2])  # the attributes are the barycentric basis
    batched = torch.stack([attr, attr * 2])
    b = rast.interpolate(batched, out, tri)
    torch.testing.assert_close(b[1], 2 * out[1, ..., :2])
    assert (out[0, ..., 3] > 0).sum() > (out[1, ..., 3] > 0).sum() > 0


# ------------------------------------------------------------------------------------------------ texture
def manual_bilinear(tex: np.ndarray, u: float, v: float, wrap: bool) -> np.ndarray:
    h, w = tex.shape[:2]
    x, y = u * w - 0.5, v * h - 0.5
    x0, y0 = math.floor(x), math.floor(y)
    fx, fy = x - x0, y - y0

    def at(i: int, j: int) -> np.ndarray:
        if wrap:
            return tex[i % h, j % w]
        return tex[min(max(i, 0), h - 1), min(max(j, 0), w - 1)]

    return ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1)) + fy * ((1 - fx) * at(y0 + 1, x0)
            + fx * at(y0 + 1, x0 + 1)))


@pytest.mark.parametrize("mode", ["wrap", "clamp"])
def test_texture_linear_matches_manual_bilinear(rast, mode):
    g = torch.Generator().manual_seed(0)
    tex = torch.rand(1, 5, 7, 3, generator=g, dtype=torch.float64)
    uv = torch.rand(1, 4, 6, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3  # includes out-of-range uvs
    out = rast.texture(tex, uv, "linear", boundary_mode=mode)
    for i in range(4):
        for j in range(6):
            want = manual_bilinear(tex[0].numpy(), float(uv[0, i, j, 0]), float(uv[0, i, j, 1]), mode == "wrap")
            np.testing.assert_allclose(out[0, i, j].numpy(), want, atol=1e-10)
    # texel centres return texels exactly; v = 0 is the first row
    centre = torch.tensor([[[[(2 + 0.5) / 7, (0 + 0.5) / 5]]]], dtype=torch.float64)
    torch.testing.assert_close(rast.texture(tex, centre)[0, 0, 0], tex[0, 0, 2])


def test_mip_levels_and_uv_derivatives(rast):
    tex = torch.arange(8 * 8, dtype=torch.float64).reshape(1, 8, 8, 1)
    pyr = mip_pyramid(tex.permute(0, 3, 1, 2))
    assert [tuple(p.shape[-2:]) for p in pyr] == [(8, 8), (4, 4), (2, 2), (1, 1)]
    torch.testing.assert_close(pyr[1][0, 0, 0, 0], tex[0, :2, :2, 0].mean())
    # a uv ramp advancing 2 texels per pixel -> level 1 exactly; 1.5 levels blends levels 1 and 2
    h = w = 4
    cols = torch.arange(w, dtype=torch.float64)
    uv = torch.stack(torch.broadcast_tensors((cols[None, :] * 2 + 1) / 8, torch.full((h, w), 0.5 / 8,
                                              dtype=torch.float64)), -1)[None]
    da = estimate_uv_da(uv)
    torch.testing.assert_close(da[0, ..., 0], torch.full((h, w), 2 / 8, dtype=torch.float64))
    torch.testing.assert_close(da[0, ..., 1:], torch.zeros(h, w, 3, dtype=torch.float64))
    torch.testing.assert_close(mip_level_from_uv_da(da, (8, 8)), torch.ones(1, h, w, dtype=torch.float64))
    mipped = rast.texture(tex, uv, "linear-mipmap-linear", uv_da=da)
    torch.testing.assert_close(mipped, rast.texture(pyr[1].permute(0, 2, 3, 1), uv))
    half = rast.texture(tex, uv, "linear-mipmap-linear", uv_da=da, mip_level_bias=torch.full((1, h, w), 0.5,
                                                                                              dtype=torch.float64))
    want = 0.5 * rast.texture(pyr[1].permute(0, 2, 3, 1), uv) + 0.5 * rast.texture(pyr[2].permute(0, 2, 3, 1), uv)
    torch.testing.assert_close(half, want)


@pytest.mark.parametrize("mode", ["linear", "linear-mipmap-linear"])
def test_texture_of_no_pixels_is_empty(rast, mode):
    """A view where the mesh covers no pixel samples an empty (1,0,1,2) uv batch: an empty result, not a crash."""
    tex = torch.rand(1, 8, 8, 3, requires_grad=True)
    uv = torch.zeros(1, 0, 1, 2)
    out = rast.texture(tex, uv, mode, uv_da=torch.zeros(1, 0, 1, 4) if mode != "linear" else None)
    assert out.shape == (1, 0, 1, 3)
    out.sum().backward()  # the empty result still joins the graph of the caller's loss
    out = rast.texture(tex, uv, mode)  # mip level estimated from uv
    assert out.shape == (1, 0, 1, 3)


def test_render_of_a_mesh_outside_the_view_is_background(rast):
    from cg_lightning.cameras import orbit
    from cg_lightning.mesh.mesh import Mesh
    from cg_lightning.render.mesh import render_mesh

    v = torch.tensor([[0.0, 0, 0], [0.1, 0, 0], [0, 0.1, 0]]) + torch.tensor([50.0, 0, 0])  # far off-screen
    mesh = Mesh(v=v, f=torch.tensor([[0, 1, 2]]), vt=torch.rand(3, 2), albedo=torch.rand(8, 8, 3))
    out = render_mesh(mesh, orbit(0.0, 0.0, 2.0, 49.1, 16, 16), rast, torch.ones(3), filter_mode="linear-mipmap-linear")
    torch.testing.assert_close(out.image, torch.ones(3, 16, 16))
    assert float(out.alpha.max()) == 0.0


def test_uv_derivative_estimate_ignores_seams():
    """Across a UV seam the smaller one-sided difference is used, so the level stays that of the surface."""
    u = torch.tensor([0.1, 0.2, 0.3, 0.9, 1.0, 1.1])  # jump between columns 2 and 3 (a seam)
    uv = torch.stack([u, torch.zeros(6)], -1).view(1, 1, 6, 2)
    da = estimate_uv_da(uv)
    torch.testing.assert_close(da[0, 0, :, 0], torch.full((6,), 0.1), atol=1e-6, rtol=0)
    masked = estimate_uv_da(uv, mask=torch.tensor([[[True, True, True, True, False, False]]]))
    assert float(masked[0, 0, 3, 0]) == pytest.approx(0.6)  # its only valid neighbour is across the seam


# ------------------------------------------------------------------------------------------------ antialias
def square(x0: float, x1: float, y0: float, y1: float) -> torch.Tensor:
    return torch.tensor([[[x0, y0, 0.0, 1.0], [x1, y0, 0.0, 1.0], [x1, y1, 0.0, 1.0], [x0, y1, 0.0, 1.0]]],
                        dtype=torch.float64)


QUAD = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)


@pytest.mark.parametrize("edge_px", [10.8, 11.3])
def test_antialias_blends_by_coverage(rast, edge_px):
    """A vertical silhouette at pixel position ``edge_px``: the straddled pixel gets its exact coverage."""
    w = 20
    x1 = edge_px / w * 2 - 1
    pos = square(-0.6, x1, -0.6, 0.6)
    out = rast.rasterize(pos, QUAD, (20, w))
    cov = (out[..., 3:] > 0).double()
    aa = rast.antialias(cov, out, pos, QUAD)[0, 10, :, 0]
    col = int(math.floor(edge_px))
    assert float(aa[col]) == pytest.approx(edge_px - col, abs=1e-9)
    assert float(aa[col - 1]) == pytest.approx(1.0) and float(aa[col + 1]) == pytest.approx(0.0)
    # interior edge (the diagonal shared by the two triangles) is not blended
    inner = rast.antialias(cov, out, pos, QUAD)[0, 4:16, 5:col]
    torch.testing.assert_close(inner, torch.ones_like(inner), atol=1e-12, rtol=0)


def test_antialias_gives_silhouette_gradients_of_the_right_size(rast):
    """d(coverage)/d(x of the right edge) = (#rows crossed) * (W/2 pixels per NDC unit), split over its 2 vertices."""
    h = w = 24
    pos = square(-0.5, 0.52, -0.5, 0.5).requires_grad_()
    out = rast.rasterize(pos, QUAD, (h, w))
    cov = (out[..., 3:] > 0).double()
    coverage = rast.antialias(cov, out, pos, QUAD).sum()
    coverage.backward()
    g = pos.grad[0]
    rows = int((out[0, :, :, 3] > 0).any(1).sum())
    right = float(g[1, 0] + g[2, 0])
    left = float(g[0, 0] + g[3, 0])
    assert right == pytest.approx(rows * w / 2, rel=0.1)
    assert left == pytest.approx(-rows * w / 2, rel=0.1)
    top_bottom = float(g[2, 1] + g[3, 1])  # moving the y = 0.5 edge up grows the square
    assert top_bottom > 0


# ------------------------------------------------------------------------------------------------ gradients
def test_gradcheck_rasterize_interpolate_texture(rast):
    """Finite differences agree with autograd for vertex positions, attributes, textures (no coverage change)."""
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    pos0 = torch.tensor([[[-0.71, -0.63, 0.2, 1.0], [0.74, -0.52, 0.4, 1.3], [0.05, 0.81, 0.1, 0.9]]],
                        dtype=torch.float64)
    uv0 = torch.tensor([[0.1, 0.2], [0.8, 0.3], [0.4, 0.9]], dtype=torch.float64)
    tex0 = torch.rand(1, 4, 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def fn(pos, uv, tex):
        out = rast.rasterize(pos, tri, (6, 6))
        return rast.texture(tex, rast.interpolate(uv, out, tri), "linear"), out[..., :3]

    inputs = (pos0.clone().requires_grad_(), uv0.clone().requires_grad_(), tex0.clone().requires_grad_())
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


def test_gradients_pull_texture_and_vertices_towards_target(rast):
    """One gradient step on a textured quad moves texels and vertices so that the loss decreases."""
    cam = orbit(0.0, 0.0, 2.0, width=32, height=32)
    v = torch.tensor([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.5, 0.5, 0.0], [-0.5, 0.5, 0.0]])
    vt = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    f = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    mvp = cam.mvp_gl

    def render(verts, tex):
        pos = (F.pad(verts, (0, 1), value=1.0) @ mvp.T)[None]
        out = rast.rasterize(pos, f, (32, 32))
        col = rast.texture(tex[None], rast.interpolate(vt, out, f)) * (out[..., 3:] > 0)
        return rast.antialias(col, out, pos, f)

    target = render(v * 1.1, torch.ones(8, 8, 1)).detach()  # larger, white square
    verts = v.clone().requires_grad_()
    tex = torch.full((8, 8, 1), 0.3, requires_grad=True)
    loss = ((render(verts, tex) - target) ** 2).sum()
    loss.backward()
    assert torch.all(tex.grad < 0)  # texels should brighten
    radial = (verts.grad[:, :2] * v[:, :2]).sum(-1)
    assert torch.all(radial < 0)  # vertices should move outwards (negative gradient along the outward direction)
    with torch.no_grad():
        new = ((render(verts - 1e-3 * verts.grad, tex - 0.05 * tex.grad) - target) ** 2).sum()
    assert float(new) < float(loss.detach())


# ------------------------------------------------------------------------------------------------ factory
def test_factory_and_errors(rast):
    assert build_mesh_rasterizer("torch").name == "torch"
    auto = build_mesh_rasterizer("auto")
    assert auto.name == ("nvdiffrast" if cuda_nvdiffrast_available() else "torch")
    with pytest.raises(ConfigError, match="renderer.mesh"):
        build_mesh_rasterizer("opengl")
    with pytest.raises(ConfigError):
        rast.texture(torch.zeros(1, 2, 2, 3), torch.zeros(1, 2, 2, 2), "nearest")
    nv = build_mesh_rasterizer("nvdiffrast")
    with pytest.raises(CGError):  # CPU tensors (or a missing package) give a clear error, not a crash
        nv.rasterize(torch.zeros(1, 3, 4), torch.tensor([[0, 1, 2]]), (4, 4))


# ------------------------------------------------------------------------------------------------ GPU parity
@pytest.mark.gpu
def test_parity_with_nvdiffrast():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("nvdiffrast.torch")
    import trimesh

    dev = torch.device("cuda")
    nv, tr = build_mesh_rasterizer("nvdiffrast"), TorchMeshRasterizer()
    s = trimesh.creation.icosphere(3, radius=0.6)
    v = torch.tensor(s.vertices, dtype=torch.float32, device=dev)
    f = torch.tensor(s.faces, dtype=torch.int32, device=dev)
    cam = orbit(-20.0, 30.0, 2.0, width=128, height=128).to(dev)
    pos = (F.pad(v, (0, 1), value=1.0) @ cam.mvp_gl.T)[None].contiguous()
    a, b = nv.rasterize(pos, f, (128, 128)), tr.rasterize(pos, f, (128, 128))
    same = (a[..., 3] == b[..., 3]) & (a[..., 3] > 0)
    assert float(((a[..., 3] > 0) != (b[..., 3] > 0)).float().mean()) < 0.005
    assert float(same.float().sum() / (a[..., 3] > 0).float().sum()) > 0.98
    torch.testing.assert_close(a[same][:, :3], b[same][:, :3], atol=1e-4, rtol=0)
    attr = torch.rand(v.shape[0], 3, device=dev)
    ia, ib = nv.interpolate(attr, a, f), tr.interpolate(attr, a, f)
    torch.testing.assert_close(ia, ib, atol=1e-5, rtol=0)
    tex = torch.rand(1, 64, 64, 3, device=dev)
    uv = torch.rand(1, 32, 32, 2, device=dev)
    torch.testing.assert_close(nv.texture(tex, uv), tr.texture(tex, uv), atol=1e-4, rtol=0)
    col = (a[..., 3:] > 0).float().repeat(1, 1, 1, 3)
    aa_nv, aa_tr = nv.antialias(col, a, pos, f), tr.antialias(col, a, pos, f)
    changed = ((aa_nv - col).abs() > 1e-6) | ((aa_tr - col).abs() > 1e-6)
    assert bool(changed.any())
    assert float((aa_nv - aa_tr)[changed].abs().mean()) < 0.15  # same algorithm, details differ
