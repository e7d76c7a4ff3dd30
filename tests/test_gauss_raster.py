"""The pure-PyTorch tile rasterizer against the golden fixture of diff-gaussian-rasterization's forward pass,
the naive per-pixel reference (images and gradients), gsplat's PyTorch projection, and the backend factory."""

from __future__ import annotations

import math

import pytest
import torch

from cg_lightning.cameras import orbit
from cg_lightning.errors import CGError, ConfigError
from cg_lightning.gaussians.model import GaussianModel
from cg_lightning.render.gaussian import build_gaussian_rasterizer
from cg_lightning.render.gaussian.projection import project_gaussians
from cg_lightning.render.gaussian.reference import render_reference
from cg_lightning.render.gaussian.torch_backend import (
    TorchGaussianRasterizer,
    _CompositeSegments,
    _Plan,
    rasterize_projected,
)

GRAD_NAMES = ("xyz", "features_dc", "opacity", "scaling", "rotation")


def scene(
    n: int = 150, seed: int = 0, scale_shift: float = 0.5, opacity: float | None = None, sh_degree: int = 0
) -> GaussianModel:
    g = torch.Generator().manual_seed(seed)
    m = GaussianModel.random_ball(n, sh_degree=sh_degree, generator=g)
    with torch.no_grad():
        m.scaling.add_(scale_shift + 0.4 * torch.randn(m.scaling.shape, generator=g))
        m.rotation.copy_(torch.randn(m.rotation.shape, generator=g))
        m.features_dc.copy_(torch.randn(m.features_dc.shape, generator=g))
        m.features_rest.copy_(0.3 * torch.randn(m.features_rest.shape, generator=g))
        if opacity is None:
            m.opacity.copy_(1.5 * torch.randn(m.opacity.shape, generator=g))
        else:
            m.opacity.fill_(opacity)
    return m


def weighted_loss(out, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return sum(
        (getattr(out, k) * torch.rand(getattr(out, k).shape, generator=g)).sum()
        for k in ("image", "alpha", "depth")
    )


def grads(model: GaussianModel, out) -> dict[str, torch.Tensor]:
    model.zero_grad()
    weighted_loss(out).backward()
    res = {k: getattr(model, k).grad.clone() for k in GRAD_NAMES}
    res["means2d"] = out.means2d.grad.clone()
    model.zero_grad()
    return res


def assert_matches_reference(model, cam, bg, atol=2e-5, grad_rtol=2e-5):
    out = TorchGaussianRasterizer().render(model, cam, bg)
    ref = render_reference(model, cam, bg)
    for key in ("image", "alpha", "depth"):
        torch.testing.assert_close(getattr(out, key), getattr(ref, key), atol=atol, rtol=0, msg=key)
    assert torch.equal(out.radii, ref.radii)
    g_out, g_ref = grads(model, out), grads(model, ref)
    for key in g_ref:
        scale = g_ref[key].abs().max().item()
        assert scale > 0, key
        torch.testing.assert_close(g_out[key], g_ref[key], atol=grad_rtol * scale, rtol=0, msg=key)
    return out, ref


def test_matches_reference_on_a_generic_scene():
    """Non-square image with partial tiles, anisotropic rotated Gaussians, coloured background."""
    out, _ = assert_matches_reference(
        scene(), orbit(-20, 30, width=70, height=45), torch.tensor([1.0, 0.5, 0.0])
    )
    assert (
        out.image.shape == (3, 45, 70) and out.alpha.shape == (1, 45, 70) and out.depth.shape == (1, 45, 70)
    )
    assert 0.05 < out.alpha.mean().item() < 0.95  # the scene really covers part of the image
    assert out.radii.dtype == torch.int32


def test_matches_reference_with_clamp_and_early_stop():
    """Opacity 0.9975 > 0.99: the clamp bites and transmittance reaches the 1e-4 stop."""
    m = scene(n=200, seed=1, scale_shift=0.5, opacity=6.0)
    out, ref = assert_matches_reference(m, orbit(0, 0, width=40, height=40), torch.ones(3))
    assert ref.alpha.max().item() > 0.9998


def test_matches_reference_with_subpixel_gaussians():
    m = scene(n=250, seed=2, scale_shift=-2.0)
    assert_matches_reference(
        m, orbit(10, -40, width=48, height=48), torch.zeros(3), atol=1e-5, grad_rtol=5e-5
    )


def test_matches_reference_with_view_dependent_colour():
    m = scene(n=80, seed=3, sh_degree=1)
    cam, bg = orbit(-30, 120, width=40, height=32), torch.tensor([0.2, 0.3, 0.4])
    assert_matches_reference(m, cam, bg)
    m.zero_grad()
    TorchGaussianRasterizer().render(m, cam, bg).image.sum().backward()
    assert m.features_rest.grad.abs().sum() > 0


def test_block_and_segment_sizes_do_not_change_pixels():
    m = scene(n=300, seed=4)
    cam = orbit(-10, 10, width=64, height=56)
    bg = torch.ones(3)
    base = TorchGaussianRasterizer(block_size=16, segment=1000).render(m, cam, bg)
    for kwargs in (
        {"block_size": 8},
        {"block_size": 4},
        {"block_size": 8, "segment": 1},
        {"block_size": 8, "segment": 3, "max_elems": 3_000},
        {"block_size": 8, "segment": 1, "grow_after": 1, "max_segment": 8},
        {"block_size": 8, "segment": 2, "grow_after": 1 << 30},
    ):
        other = TorchGaussianRasterizer(**kwargs).render(m, cam, bg)
        # only float rounding differs (the exponent is expanded around another block centre)
        torch.testing.assert_close(other.image, base.image, atol=2e-5, rtol=0)
        torch.testing.assert_close(other.alpha, base.alpha, atol=2e-5, rtol=0)


def test_growing_segments_walk_deep_lists_in_fewer_rounds():
    """After ``grow_after`` rounds the segment doubles (up to ``max_segment``): the deep lists of a dense scene take
    far fewer rounds (each round costs a dozen tensor passes), the pixels and gradients stay the same."""
    m = scene(n=600, seed=5, scale_shift=0.8)
    cam, bg = orbit(0, 30, width=32, height=32), torch.ones(3)
    outs, grads, rounds = [], [], []
    for kwargs in ({"segment": 2, "grow_after": 1 << 30}, {"segment": 2, "grow_after": 2, "max_segment": 64}):
        r = TorchGaussianRasterizer(**kwargs)
        m.zero_grad()
        out = r.render(m, cam, bg)
        out.image.sum().backward()
        outs.append(out.image.detach())
        grads.append(m.xyz.grad.clone())
        rounds.append(r.last_stats["rounds"])
    torch.testing.assert_close(outs[1], outs[0], atol=2e-5, rtol=0)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-4, rtol=1e-4)
    assert rounds[1] < rounds[0] / 2
    with pytest.raises(ValueError, match="grow_after"):
        TorchGaussianRasterizer(grow_after=0)


def test_saturated_blocks_stop_early_without_changing_pixels():
    """Opaque scene: blocks leave the walk once all their pixels stopped, so far fewer elements are evaluated
    than a full walk, and the pixels equal the full walk's and the naive reference's."""
    m = scene(n=400, seed=9, scale_shift=1.2, opacity=4.0)
    cam, bg = orbit(0, 0, width=48, height=40), torch.tensor([0.3, 0.6, 0.9])
    short, full = TorchGaussianRasterizer(segment=4), TorchGaussianRasterizer(block_size=16, segment=10**6)
    out_short, out_full = short.render(m, cam, bg), full.render(m, cam, bg)
    torch.testing.assert_close(out_short.image, out_full.image, atol=2e-5, rtol=0)
    assert (out_short.alpha > 0.9998).float().mean() > 0.5  # most pixels saturate
    assert short.last_stats["elements"] < 0.5 * full.last_stats["elements"]
    assert_matches_reference(m, cam, bg)


def test_contributing_count_is_the_number_of_nonzero_weights():
    m = scene(n=200, seed=10, opacity=2.0)
    cam = orbit(0, 30, width=32, height=32)
    r = TorchGaussianRasterizer(count_contributing=True)
    r.render(m, cam, torch.ones(3))
    ref = render_reference(m, cam, torch.ones(3))  # count pixels x Gaussians with a non-zero weight
    proj = project_gaussians(m.means, m.scales, m.rotations, cam)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    with torch.no_grad():
        dx = proj.pix[:, 0, None, None] - 0.5 - xx
        dy = proj.pix[:, 1, None, None] - 0.5 - yy
        a, b, c = (proj.conic[:, k, None, None] for k in range(3))
        alpha = (m.opacities[:, 0, None, None] * torch.exp(-0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy))
        alpha = alpha.clamp(max=0.99) * (alpha >= 1 / 255) * (proj.radii > 0)[:, None, None]
        order = torch.argsort(proj.depth)
        log_t = torch.cumsum(torch.log1p(-alpha[order]), 0)
        expected = int(((log_t >= math.log(1e-4)) & (alpha[order] > 0)).sum())
    assert 0 < r.last_stats["contributing"] <= r.last_stats["elements"]
    assert abs(r.last_stats["contributing"] - expected) <= 0.002 * expected  # 3-sigma tile cull differs a hair
    assert ref.alpha.max() > 0.99


def test_composite_backward_passes_gradcheck():
    """Closed-form backward of the segmented walk, with a carried transmittance across 3 rounds."""
    g = torch.Generator().manual_seed(0)
    blocks, length, pixels = 2, 7, 16
    n = blocks * length
    coef = torch.zeros(n + 1, 6, dtype=torch.float64)
    coef[:n, :3] = -0.01 * torch.rand(n, 3, generator=g, dtype=torch.float64)  # gentle falloff
    coef[:n, 2] = 0.0
    coef[:n, 3:5] = 0.02 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    coef[:n, 5] = torch.log(0.1 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64))
    coef[n, 5] = -1e4  # the pad pair
    attr = torch.rand(n + 1, 5, dtype=torch.float64, generator=g)
    u = torch.arange(4, dtype=torch.float64) - 1.5
    vv, uu = torch.meshgrid(u, u, indexing="ij")
    uu, vv = uu.reshape(-1), vv.reshape(-1)
    feat = torch.stack([uu * uu, vv * vv, uu * vv, uu, vv, torch.ones_like(uu)], -1)
    assert feat.shape[0] == pixels
    counts = torch.tensor([length, length - 2])
    dead = torch.zeros(blocks, pixels, dtype=torch.bool)
    dead[1, :3] = True  # pixels outside the image

    def run(c, a):
        plan = _Plan(torch.tensor([0, length]), counts, n, dead, 3, 10**6, False, False)
        out = _CompositeSegments.apply(c, a, feat, plan)
        assert plan.rounds == 3
        return out

    coef.requires_grad_(True)
    attr.requires_grad_(True)
    assert torch.autograd.gradcheck(run, (coef, attr))


def test_means2d_gradient_is_in_ndc_units():
    """dL/dNDC = dL/dpixel * (W/2, H/2), i.e. diff-gaussian-rasterization's viewspace-point gradient."""
    m = scene(n=60, seed=5)
    cam = orbit(0, 20, width=64, height=32)
    proj = project_gaussians(m.means, m.scales, m.rotations, cam)
    pix = proj.pix.detach().clone().requires_grad_(True)
    img, alpha, _ = rasterize_projected(
        pix,
        proj.conic,
        m.opacities[:, 0],
        proj.depth,
        m.colors,
        proj.cov2d,
        proj.radii,
        proj.rect,
        64,
        32,
        torch.ones(3),
    )
    (img.clamp(0, 1).sum() + alpha.sum()).backward()
    out = TorchGaussianRasterizer().render(m, cam, torch.ones(3))
    (out.image.sum() + out.alpha.sum()).backward()
    torch.testing.assert_close(out.means2d.grad, pix.grad * torch.tensor([32.0, 16.0]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        out.means2d.detach(),
        (proj.pix.detach() - torch.tensor([32.0, 16.0])) / torch.tensor([32.0, 16.0]),
        atol=1e-6,
        rtol=0,
    )


def test_culling_behind_camera_and_empty_images():
    m = scene(n=40, seed=6)
    with torch.no_grad():
        m.xyz[:20, 2] += 3.0  # camera at z=2 looking at -z: these are behind it or too close
    cam = orbit(0, 0, width=32, height=32)
    out = TorchGaussianRasterizer().render(m, cam, torch.ones(3))
    assert (out.radii[:20] == 0).all() and (out.radii[20:] > 0).any()
    weighted_loss(out).backward()
    assert all(torch.isfinite(getattr(m, k).grad).all() for k in GRAD_NAMES)
    assert (m.xyz.grad[:20] == 0).all()
    with torch.no_grad():
        m.xyz[:, 2] += 5.0
    empty = TorchGaussianRasterizer().render(m, cam, torch.tensor([0.1, 0.2, 0.3]))
    assert (empty.radii == 0).all() and (empty.alpha == 0).all()
    torch.testing.assert_close(empty.image, torch.tensor([0.1, 0.2, 0.3])[:, None, None].expand(3, 32, 32))


def test_background_compositing_and_scale_modifier():
    m = scene(n=100, seed=7)
    cam = orbit(-10, 0, width=32, height=32)
    r = TorchGaussianRasterizer()
    black, white = r.render(m, cam, torch.zeros(3)), r.render(m, cam, torch.ones(3))
    torch.testing.assert_close(
        white.image - black.image, (1 - black.alpha).expand(3, -1, -1), atol=1e-5, rtol=0
    )
    scaled = r.render(m, cam, torch.ones(3), scale_modifier=0.5)
    with torch.no_grad():
        m.scaling.sub_(torch.log(torch.tensor(2.0)))
    torch.testing.assert_close(scaled.image, r.render(m, cam, torch.ones(3)).image, atol=1e-5, rtol=0)


def test_projection_matches_gsplat_torch_reference():
    pytest.importorskip("gsplat")
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    m = scene(n=200, seed=8)
    cam = orbit(-25, 70, width=96, height=64)
    covars, _ = _quat_scale_to_covar_preci(m.rotation, m.scales, compute_preci=False)
    torch.testing.assert_close(covars, m.covariances(), atol=1e-6, rtol=1e-5)
    radii, means2d, depths, conics, _ = _fully_fused_projection(
        m.means, covars, cam.w2c[None], cam.K[None], 96, 64, eps2d=0.3, near_plane=0.2
    )
    proj = project_gaussians(m.means, m.scales, m.rotations, cam)
    vis = (radii[0] > 0).all(-1) & (proj.radii > 0)
    assert vis.sum() > 150
    torch.testing.assert_close(proj.pix[vis], means2d[0][vis], atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(proj.depth[vis], depths[0][vis], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(proj.conic[vis], conics[0][vis], atol=1e-5, rtol=1e-4)
    # both use 3DGS' 1.3 tan(fov) clamp: check with a Gaussian in front of the camera but far off to the side
    far = GaussianModel.random_ball(1)
    cam_point = torch.tensor([5.0, -1.0, 2.0, 1.0])  # OpenCV camera coordinates, x/z = 2.5
    with torch.no_grad():
        far.xyz.copy_((torch.linalg.inv(cam.w2c) @ cam_point)[None, :3])
        far.scaling.fill_(-1.0)
    cov_far, _ = _quat_scale_to_covar_preci(far.rotation, far.scales, compute_preci=False)
    _, _, _, conic_far, _ = _fully_fused_projection(
        far.means, cov_far, cam.w2c[None], cam.K[None], 96, 64, eps2d=0.3, near_plane=0.2
    )
    proj_far = project_gaussians(far.means, far.scales, far.rotations, cam)
    torch.testing.assert_close(proj_far.conic, conic_far[0], atol=1e-6, rtol=1e-4)


def test_backend_factory():
    assert build_gaussian_rasterizer("torch").name == "torch"
    if not torch.cuda.is_available():
        assert build_gaussian_rasterizer("auto").name == "torch"
        for name in ("gsplat", "inria"):
            with pytest.raises(CGError):
                build_gaussian_rasterizer(name)
    with pytest.raises(ConfigError):
        build_gaussian_rasterizer("vulkan")
