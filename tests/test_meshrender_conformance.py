"""render_mesh / the mesh backends against DreamGaussian's mesh renderer (nvdiffrast) step by step.

Each test pins one official behaviour and fails on the variant this framework used before (still available as an
option): texture logits filtered before the sigmoid, exact UV pixel derivatives and nvdiffrast's mip-level formula,
antialiased colour composited with the binary coverage, and DG's resize back from another render scale.
"""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from cg_lightning.cameras import orbit
from cg_lightning.errors import ConfigError
from cg_lightning.mesh import Mesh
from cg_lightning.render.mesh import TorchMeshRasterizer, render_mesh
from cg_lightning.render.mesh.base import mip_level_from_uv_da
from cg_lightning.render.mesh.nvdiffrast_backend import NvdiffrastMeshRasterizer
from cg_lightning.render.mesh.render import resize_back, ssaa_size
from cg_lightning.render.mesh.torch_backend import mip_pyramid

HALF, Z = 0.5, 0.25


def square(albedo: torch.Tensor | None, dtype=torch.float32) -> Mesh:
    v = torch.tensor([[-HALF, -HALF, Z], [HALF, -HALF, Z], [HALF, HALF, Z], [-HALF, HALF, Z]], dtype=dtype)
    vt = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]], dtype=dtype)
    return Mesh(v=v, f=torch.tensor([[0, 1, 2], [0, 2, 3]]), vt=vt, albedo=albedo).auto_normals()


@pytest.fixture(scope="module")
def rast() -> TorchMeshRasterizer:
    return TorchMeshRasterizer()


# ------------------------------------------------------------------------------------- 1. logits, then sigmoid
def test_logits_are_filtered_before_the_sigmoid(rast):
    """A texel-sized checker of logits -8 / +2 seen from far away (mip level > 1): DG averages the logits
    (sigmoid(-3) = 0.047); averaging the colours instead gives (sigmoid(-8) + sigmoid(2)) / 2 = 0.44."""
    n = 64
    checker = (torch.arange(n)[:, None] + torch.arange(n)[None, :]) % 2 == 0
    logits = torch.where(checker, -8.0, 2.0)[..., None].expand(n, n, 3).contiguous()
    mesh = square(None)
    cam = orbit(0, 0, 2.0, width=16, height=16)  # the square covers ~9 px: ~7 texels per pixel
    official = render_mesh(mesh, cam, rast, 1.0, albedo=logits, texture_activation="sigmoid",
                           silhouette="binary", resize="bilinear")
    colours = render_mesh(mesh, cam, rast, 1.0, albedo=torch.sigmoid(logits))
    inside = official.alpha[0] > 0.5
    inside[[0, -1], :] = False
    inside = inside & F.max_pool2d((~inside).float()[None], 3, 1, 1)[0].eq(0)  # interior pixels only
    assert int(inside.sum()) >= 9
    torch.testing.assert_close(official.image[:, inside], torch.full_like(official.image[:, inside],
                                                                           torch.sigmoid(torch.tensor(-3.0)).item()),
                               atol=2e-3, rtol=0)
    assert float((colours.image[:, inside] - 0.44).abs().max()) < 0.01


# ------------------------------------------------------------------------------------- 2. exact derivatives
def _ray_uv(cam, px: float, py: float) -> torch.Tensor:
    """uv of the square hit by the ray through NDC (px, py), by ray casting in float64 (no rasterizer involved)."""
    inv = torch.linalg.inv(cam.mvp_gl.double())
    near = inv @ torch.tensor([px, py, -1.0, 1.0], dtype=torch.float64)
    far = inv @ torch.tensor([px, py, 1.0, 1.0], dtype=torch.float64)
    a, b = near[:3] / near[3], far[:3] / far[3]
    t = (Z - a[2]) / (b[2] - a[2])
    hit = a + t * (b - a)
    return torch.stack([(hit[0] + HALF) / (2 * HALF), 1 - (hit[1] + HALF) / (2 * HALF)])


def test_uv_derivatives_match_finite_differences_of_a_ray_cast(rast):
    """Tilted square in perspective: uv_da from rasterize(with_db) + interpolate(rast_db) equals central finite
    differences of the ray-cast uv at the pixel centre (one pixel = 2/W in NDC)."""
    size = 24
    cam = orbit(-25, 35, 2.0, width=size, height=size)
    mesh = square(None, torch.float64)
    pos = (F.pad(mesh.v, (0, 1), value=1.0) @ cam.mvp_gl.double().T)[None]
    tri = mesh.f.int()
    r, r_db = rast.rasterize(pos, tri, (size, size), with_db=True)
    uv, uv_da = rast.interpolate(mesh.vt, r, tri, rast_db=r_db)
    covered = (r[0, ..., 3] > 0).nonzero().tolist()
    assert len(covered) > 100
    eps = 1e-3  # pixels
    for i, j in covered[::7]:
        px, py = (2 * j + 1) / size - 1, (2 * i + 1) / size - 1
        torch.testing.assert_close(uv[0, i, j], _ray_uv(cam, px, py), atol=1e-9, rtol=0)
        d = 2 * eps / size
        ddx = (_ray_uv(cam, px + d, py) - _ray_uv(cam, px - d, py)) / (2 * eps)
        ddy = (_ray_uv(cam, px, py + d) - _ray_uv(cam, px, py - d)) / (2 * eps)
        want = torch.stack([ddx[0], ddy[0], ddx[1], ddy[1]])
        torch.testing.assert_close(uv_da[0, i, j], want, atol=1e-7, rtol=1e-5)
    off = r[0, ..., 3] == 0
    assert float(uv_da[0][off].abs().max()) == 0.0 and float(r_db[0][off].abs().max()) == 0.0


def test_mip_level_is_nvdiffrasts_major_axis():
    """nvdiffrast: level = log2 of the largest singular value of the texel-space Jacobian. A skewed footprint whose
    columns are both 4 texels long is longer than 4 along its diagonal; the former max-column rule said level 2."""
    tw, th = 64, 32
    jac = torch.tensor([[[4.0, 2.8], [0.0, 2.857]], [[0.5, 0.0], [0.0, 0.25]], [[3.0, -3.0], [1.0, 1.0]]],
                       dtype=torch.float64)  # rows (ds, dt), columns (dX, dY), in texels
    uv_da = torch.stack([jac[:, 0, 0] / tw, jac[:, 0, 1] / tw, jac[:, 1, 0] / th, jac[:, 1, 1] / th], -1)
    want = torch.log2(torch.linalg.svdvals(jac)[:, 0]).clamp_min(0)
    torch.testing.assert_close(mip_level_from_uv_da(uv_da, (th, tw)), want)
    assert float(want[0]) > 2.2  # both columns have length 4 (level 2 by the max-column rule)


def test_render_mesh_samples_with_the_exact_derivatives(rast):
    """The texels render_mesh returns are texture(uv, uv_da exact) at every covered pixel (seams included)."""
    size = 20
    gen = torch.Generator().manual_seed(0)
    tex = torch.rand(32, 32, 3, generator=gen)
    mesh = square(tex)
    cam = orbit(-40, 60, 2.0, width=size, height=size)
    out = render_mesh(mesh, cam, rast, 0.0, antialias=False)
    pos = (F.pad(mesh.v, (0, 1), value=1.0) @ cam.mvp_gl.T)[None]
    r, r_db = rast.rasterize(pos, mesh.f.int(), (size, size), with_db=True)
    uv, uv_da = rast.interpolate(mesh.vt, r, mesh.f.int(), rast_db=r_db)
    want = rast.texture(tex[None], uv, "linear-mipmap-linear", uv_da=uv_da)[0] * (r[0, ..., 3:] > 0)
    torch.testing.assert_close(out.image.permute(1, 2, 0), want, atol=1e-6, rtol=0)
    lam = mip_level_from_uv_da(uv_da, (32, 32))[0][r[0, ..., 3] > 0]
    assert float(lam.max()) > 0.5  # the test exercises minification, not only level 0


def test_nvdiffrast_adapter_passes_rast_db_and_diff_attrs_all(monkeypatch):
    """The CUDA adapter forwards rasterize's rast_db and asks interpolate for every attribute's derivatives."""
    calls: dict[str, dict] = {}
    rast_out, db_out = torch.rand(1, 4, 4, 4), torch.rand(1, 4, 4, 4)

    def rasterize(ctx, pos, tri, resolution):
        calls["rasterize"] = {"resolution": resolution}
        return rast_out, db_out

    def interpolate(attr, rast, tri, rast_db=None, diff_attrs=None):
        calls["interpolate"] = {"rast_db": rast_db, "diff_attrs": diff_attrs}
        return torch.zeros(1, 4, 4, attr.shape[-1]), torch.zeros(1, 4, 4, 2 * attr.shape[-1])

    fake = types.SimpleNamespace(rasterize=rasterize, interpolate=interpolate, RasterizeCudaContext=lambda device: None)
    monkeypatch.setitem(sys.modules, "nvdiffrast", types.ModuleType("nvdiffrast"))
    monkeypatch.setitem(sys.modules, "nvdiffrast.torch", fake)
    nv = NvdiffrastMeshRasterizer()
    monkeypatch.setattr(nv, "_fallback", lambda t: None)
    r, r_db = nv.rasterize(torch.zeros(1, 3, 4), torch.tensor([[0, 1, 2]]), (4, 4), with_db=True)
    assert r is rast_out and r_db is db_out
    assert nv.rasterize(torch.zeros(1, 3, 4), torch.tensor([[0, 1, 2]]), (4, 4)) is rast_out
    out, da = nv.interpolate(torch.zeros(3, 2), r, torch.tensor([[0, 1, 2]]), rast_db=r_db)
    assert calls["interpolate"]["diff_attrs"] == "all" and calls["interpolate"]["rast_db"] is db_out
    assert da.shape == (1, 4, 4, 4)


# ------------------------------------------------------------------------------------- 3. binary silhouette
def test_binary_silhouette_antialiases_colour_then_applies_the_coverage(rast):
    """DG: alpha is exactly 0/1; pixels outside the triangles are the background; edge pixels inside are the
    antialiased colour, blended towards what the texture holds at uv = (0, 0) (nvdiffrast's off-mesh sample)."""
    tex = torch.zeros(8, 8, 3)
    tex[..., 0] = 1.0
    tex[0, 0] = torch.tensor([0.0, 0.0, 1.0])  # the texel at uv (0, 0): blue (the wrap mode mixes in 3 red ones)
    cam = orbit(0, 0, 2.0, width=23, height=23)  # odd size: the edges cut through pixels
    bg = torch.tensor([0.0, 1.0, 0.0])
    out = render_mesh(square(tex), cam, rast, bg, filter_mode="linear", silhouette="binary")
    old = render_mesh(square(tex), cam, rast, bg, filter_mode="linear")
    assert set(out.alpha.unique().tolist()) == {0.0, 1.0}
    outside = out.alpha[0] == 0
    torch.testing.assert_close(out.image[:, outside], bg[:, None].expand(3, int(outside.sum())))
    inside = out.alpha[0] == 1
    assert float(out.image[1][inside].abs().max()) == 0.0  # no background (green) inside
    blended = inside & (out.image[2] > 1e-4)
    assert int(blended.sum()) > 4  # some edge pixels took the uv-(0,0) colour (blue)
    torch.testing.assert_close(out.image[0] + out.image[2], torch.ones_like(out.image[0]) * inside)
    # the former variant blends coverage: fractional alpha and green at the edges
    assert bool(((old.alpha > 0) & (old.alpha < 1)).any()) and float(old.image[1][inside].max()) > 0.05


def test_binary_silhouette_gives_vertex_gradients(rast):
    """The antialiased colour still moves silhouette vertices (the binary alpha itself has no gradient)."""
    tex = torch.ones(4, 4, 3) * 0.9
    mesh = square(tex)
    v = mesh.v.clone().requires_grad_()
    m = Mesh(v=v, f=mesh.f, vt=mesh.vt, vn=mesh.vn, albedo=tex)
    out = render_mesh(m, orbit(0, 0, 2.0, width=23, height=23), rast, 0.0, filter_mode="linear", silhouette="binary")
    out.image.sum().backward()
    assert v.grad is not None and float(v.grad[:, :2].abs().sum()) > 0


# ------------------------------------------------------------------------------------- 5. resize back
def test_resize_back_follows_dreamgaussian():
    """Enlarging: align_corners=True (corners kept exactly); shrinking: plain bilinear, no antialiasing."""
    gen = torch.Generator().manual_seed(0)
    small = torch.rand(1, 2, 8, 8, generator=gen)
    up = resize_back(small, (20, 20), "bilinear")
    torch.testing.assert_close(up[..., [0, -1], :][..., [0, -1]], small[..., [0, -1], :][..., [0, -1]])
    torch.testing.assert_close(up, F.interpolate(small, (20, 20), mode="bilinear", align_corners=True))
    big = torch.rand(1, 2, 32, 32, generator=gen)
    down = resize_back(big, (8, 8), "bilinear")
    # 4x shrink, no antialiasing: each output is the mean of the 2x2 texels around its centre only
    torch.testing.assert_close(down[0, :, 0, 0], big[0, :, 1:3, 1:3].mean((-1, -2)))
    smooth = resize_back(big, (8, 8), "antialiased")
    assert float((smooth - down).abs().max()) > 1e-3
    assert resize_back(big, (32, 32), "bilinear") is big


def test_render_at_another_scale_is_resized_like_dreamgaussian(rast):
    gen = torch.Generator().manual_seed(1)
    mesh = square(torch.rand(16, 16, 3, generator=gen))
    for ssaa in (0.3, 1.7):
        size = 24
        big = ssaa_size(size, ssaa)
        assert big == int(math.ceil(size * ssaa / 8) * 8)
        out = render_mesh(mesh, orbit(-10, 20, 2.0, width=size, height=size), rast, 1.0, ssaa=ssaa,
                          silhouette="binary", resize="bilinear")
        direct = render_mesh(mesh, orbit(-10, 20, 2.0, width=big, height=big), rast, 1.0, silhouette="binary")
        maps = torch.cat([direct.image, direct.alpha], 0)[None]
        want = F.interpolate(maps, (size, size), mode="bilinear", align_corners=big < size)[0]
        torch.testing.assert_close(torch.cat([out.image, out.alpha], 0), want, atol=1e-6, rtol=0)


def test_bad_render_options_are_config_errors(rast):
    cam = orbit(0, 0, 2.0, width=8, height=8)
    for kwargs in ({"silhouette": "soft"}, {"resize": "nearest"}, {"texture_activation": "exp"}):
        with pytest.raises(ConfigError, match=next(iter(kwargs))):
            render_mesh(square(None), cam, rast, 1.0, **kwargs)


def test_mip_pyramid_level_matches_lambda(rast):
    """Sanity link between the level formula and the pyramid: an isotropic 4-texel footprint samples level 2."""
    tex = torch.rand(1, 16, 16, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    uv = torch.full((1, 1, 1, 2), 0.5, dtype=torch.float64)
    da = torch.tensor([4 / 16, 0.0, 0.0, 4 / 16], dtype=torch.float64).view(1, 1, 1, 4)
    got = rast.texture(tex, uv, "linear-mipmap-linear", uv_da=da)
    torch.testing.assert_close(got, rast.texture(mip_pyramid(tex.permute(0, 3, 1, 2))[2].permute(0, 2, 3, 1), uv))
