"""The CUDA adapters on a CPU: diff-gaussian-rasterization and nvdiffrast replaced by recorders, every argument
checked against the official conventions (tests/golden/cameras.npz, made by DreamGaussian's own code), plus the
``auto`` backend choice and the one warning when gsplat renders a paper experiment."""

from __future__ import annotations

import logging
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from cg_lightning.cameras import orbit
from cg_lightning.errors import CGError
from cg_lightning.gaussians.model import GaussianModel
from cg_lightning.render.gaussian import base as gaussian_base
from cg_lightning.render.gaussian.inria_backend import InriaRasterizer

GOLDEN = Path(__file__).parent / "golden" / "cameras.npz"


@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN)


class RecordingDGR:
    """Stands in for ``diff_gaussian_rasterization`` (DreamGaussian's fork): records the settings and the call,
    returns ``(image, radii, depth, alpha)`` where ``image`` depends (inside [0, 1]) on ``means2D`` so gradients
    can be traced."""

    def __init__(self, outputs: int = 4) -> None:
        self.calls: list[dict] = []
        self.outputs = outputs
        recorder = self

        class GaussianRasterizationSettings(types.SimpleNamespace):
            pass

        class GaussianRasterizer:
            def __init__(self, raster_settings):
                self.settings = raster_settings

            def __call__(self, **kwargs):
                recorder.calls.append({"settings": self.settings, **kwargs})
                s = self.settings
                means2d = kwargs["means2D"]
                image = s.bg[:, None, None].expand(3, s.image_height, s.image_width) + 1e-3 * (
                    means2d[:, 0].sum() + 2.0 * means2d[:, 1].sum() + 3.0 * means2d[:, 2].sum()
                )
                radii = torch.ones(means2d.shape[0], dtype=torch.int32)
                depth = torch.zeros(1, s.image_height, s.image_width)
                alpha = torch.zeros(1, s.image_height, s.image_width)
                return (image, radii, depth, alpha)[: recorder.outputs]

        self.GaussianRasterizationSettings = GaussianRasterizationSettings
        self.GaussianRasterizer = GaussianRasterizer


def small_model(sh_degree: int = 0, n: int = 5) -> GaussianModel:
    m = GaussianModel.random_ball(n, sh_degree=sh_degree, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        m.rotation.copy_(torch.randn(m.rotation.shape, generator=torch.Generator().manual_seed(1)))
    return m


@pytest.mark.parametrize("pose,intr", [(0, 0), (57, 2), (130, 3), (215, 6)])
def test_inria_arguments_follow_the_official_conventions(golden, pose, intr):
    elev, azim, radius = golden["poses_elev_azim_radius"][pose]
    fovy, width, height = golden["intrinsics_fovydeg_w_h"][intr]
    cam = orbit(elev, azim, radius, fovy_deg=fovy, width=int(width), height=int(height))
    rec = RecordingDGR()
    model = small_model(sh_degree=3)
    bg = torch.tensor([0.1, 0.2, 0.3])
    out = InriaRasterizer(module=rec).render(model, cam, bg, scale_modifier=0.7)
    call = rec.calls[-1]
    s = call["settings"]
    # row-vector matrices exactly as MiniCam builds them (tolerances: the golden README's float32 figures)
    np.testing.assert_allclose(s.viewmatrix.numpy(), golden["world_view_transform"][pose], atol=2e-7, rtol=0)
    np.testing.assert_allclose(
        s.projmatrix.numpy(), golden["full_proj_transform"][pose, intr], atol=1e-6, rtol=0
    )
    assert s.viewmatrix.dtype == s.projmatrix.dtype == torch.float32
    assert s.tanfovx == pytest.approx(golden["tanfovx"][intr], rel=1e-12)
    assert s.tanfovy == pytest.approx(golden["tanfovy"][intr], rel=1e-12)
    assert (s.image_height, s.image_width) == (int(height), int(width))
    assert isinstance(s.image_height, int) and isinstance(s.image_width, int)
    assert torch.equal(s.bg, bg) and s.bg.dtype == torch.float32
    assert s.scale_modifier == 0.7 and isinstance(s.scale_modifier, float)
    assert s.sh_degree == 3 and s.prefiltered is False and s.debug is False
    # campos: the true camera centre (DreamGaussian's MiniCam passes its negative; only used for SH degree > 0)
    np.testing.assert_array_equal(s.campos.numpy(), -golden["camera_center"][pose])
    # Gaussian arguments: activated values, scale_modifier applied by the kernel (not to the scales)
    assert call["means3D"] is model.xyz
    torch.testing.assert_close(call["shs"], model.sh)
    torch.testing.assert_close(call["opacities"], model.opacities)
    torch.testing.assert_close(call["scales"], model.scales)
    torch.testing.assert_close(call["rotations"], model.rotations)
    assert call["colors_precomp"] is None and call["cov3D_precomp"] is None
    # means2D: (N, 3), its first two columns are out.means2d, whose grad is the kernel's viewspace gradient
    assert call["means2D"].shape == (5, 3)
    out.image.sum().backward()
    pixels = int(width) * int(height) * 3
    torch.testing.assert_close(out.means2d.grad, torch.tensor([[1.0, 2.0]]).expand(5, 2) * (1e-3 * pixels))
    # and out.means2d holds the NDC centres (x right, y down)
    hom = (
        torch.cat([model.means, torch.ones(5, 1)], 1).double()
        @ torch.from_numpy(golden["full_proj_transform"][pose, intr]).double()
    )
    ndc = hom[:, :2] / (hom[:, 3:] + 1e-7)
    torch.testing.assert_close(out.means2d.detach().double(), ndc, atol=1e-5, rtol=1e-5)


def test_inria_rejects_the_upstream_rasterizer_without_alpha():
    with pytest.raises(CGError, match="DreamGaussian's fork"):
        InriaRasterizer(module=RecordingDGR(outputs=2)).render(
            small_model(), orbit(0, 0, width=8, height=8), torch.ones(3)
        )


def test_inria_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("cg_lightning.render.gaussian.inria_backend._import_dgr", lambda: RecordingDGR())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CGError, match="needs a CUDA GPU"):
        InriaRasterizer()


# ---------------------------------------------------------------- nvdiffrast


class RecordingDR:
    """Stands in for ``nvdiffrast.torch``: records each call's arguments, returns zeros of nvdiffrast's shapes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []
        rec = self

        class RasterizeCudaContext:
            def __init__(self, device=None):
                rec.calls.append(("context", (device,), {}))

        self.RasterizeCudaContext = RasterizeCudaContext

    def rasterize(self, ctx, pos, tri, resolution, **kw):
        self.calls.append(("rasterize", (ctx, pos, tri, resolution), kw))
        b = pos.shape[0]
        return torch.zeros(b, *resolution, 4), torch.zeros(b, *resolution, 4)

    def interpolate(self, attr, rast, tri, **kw):
        self.calls.append(("interpolate", (attr, rast, tri), kw))
        out = torch.zeros(*rast.shape[:3], attr.shape[-1])
        if kw.get("diff_attrs") == "all":
            return out, torch.zeros(*rast.shape[:3], 2 * attr.shape[-1])
        return out, None

    def texture(self, tex, uv, **kw):
        self.calls.append(("texture", (tex, uv), kw))
        return torch.zeros(*uv.shape[:3], tex.shape[-1])

    def antialias(self, color, rast, pos, tri, **kw):
        self.calls.append(("antialias", (color, rast, pos, tri), kw))
        return color.clone()


@pytest.fixture
def recorded_nvdiffrast(monkeypatch):
    import cg_lightning.render.mesh.nvdiffrast_backend as nvb

    rec = RecordingDR()
    monkeypatch.setattr(nvb, "_import_dr", lambda: rec)
    rast = nvb.NvdiffrastMeshRasterizer()
    monkeypatch.setattr(rast, "_fallback", lambda t: None)  # CPU tensors stand in for CUDA ones
    return rast, rec


def test_nvdiffrast_arguments(recorded_nvdiffrast, golden):
    rast, rec = recorded_nvdiffrast
    pose, intr = 40, 1
    elev, azim, radius = golden["poses_elev_azim_radius"][pose]
    fovy, width, height = golden["intrinsics_fovydeg_w_h"][intr]
    cam = orbit(elev, azim, radius, fovy_deg=fovy, width=int(width), height=int(height))
    verts = torch.rand(6, 3, generator=torch.Generator().manual_seed(0)) - 0.5
    hom = torch.cat([verts, torch.ones(6, 1)], 1)
    pos = (hom @ cam.mvp_gl.T)[None].double()  # float64 on purpose: the adapter hands nvdiffrast float32
    tri = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int64)
    rast.rasterize(pos, tri, (int(height), int(width)))
    name, (ctx, pos_in, tri_in, res), _ = rec.calls[-1]
    assert name == "rasterize" and rec.calls[0][0] == "context"
    assert pos_in.dtype == torch.float32 and pos_in.is_contiguous()
    assert tri_in.dtype == torch.int32 and tri_in.is_contiguous()
    assert res == (int(height), int(width)) and all(isinstance(v, int) for v in res)
    # clip positions are the official mesh renderer's: [v, 1] @ (inverse(pose).T @ perspective.T)
    expected = hom @ torch.from_numpy(golden["mesh_clip_rowvec"][pose, intr])
    torch.testing.assert_close(pos_in[0], expected, atol=2e-6, rtol=1e-6)
    rast.rasterize(pos, tri, (int(height), int(width)))
    assert sum(c[0] == "context" for c in rec.calls) == 1  # one context per device

    attr = torch.rand(1, 6, 2, dtype=torch.float64)
    r = torch.zeros(1, 4, 5, 4)
    rast.interpolate(attr, r, tri)
    name, (a, _, t), kw = rec.calls[-1]
    assert name == "interpolate" and a.dtype == torch.float32 and t.dtype == torch.int32
    assert "diff_attrs" not in kw
    out = rast.interpolate(attr, r, tri, rast_db=torch.zeros(1, 4, 5, 4))
    _, _, kw = rec.calls[-1]
    assert kw["diff_attrs"] == "all" and kw["rast_db"].shape == (1, 4, 5, 4)  # DG's exact UV derivatives
    assert isinstance(out, tuple) and out[1].shape == (1, 4, 5, 4)


def test_nvdiffrast_texture_and_antialias_arguments(recorded_nvdiffrast):
    rast, rec = recorded_nvdiffrast
    tex = torch.rand(1, 8, 8, 3, dtype=torch.float64)
    uv = torch.rand(1, 4, 5, 2, dtype=torch.float64)
    uv_da = torch.rand(1, 4, 5, 4)
    rast.texture(tex, uv, filter_mode="linear-mipmap-linear", uv_da=uv_da, max_mip_level=3)
    _, (t, u), kw = rec.calls[-1]
    assert t.dtype == u.dtype == torch.float32
    assert kw["filter_mode"] == "linear-mipmap-linear" and kw["boundary_mode"] == "wrap"
    assert torch.equal(kw["uv_da"], uv_da) and kw["max_mip_level"] == 3
    rast.texture(tex, uv, filter_mode="linear", uv_da=uv_da)
    _, _, kw = rec.calls[-1]
    assert "uv_da" not in kw and kw["filter_mode"] == "linear"  # nvdiffrast rejects uv_da without mipmaps
    color, r = torch.rand(1, 4, 5, 3), torch.zeros(1, 4, 5, 4)
    pos = torch.rand(1, 6, 4, dtype=torch.float64)
    rast.antialias(color, r, pos, torch.tensor([[0, 1, 2]]))
    _, (c, _, p, t), _ = rec.calls[-1]
    assert p.dtype == torch.float32 and t.dtype == torch.int32 and c.is_contiguous()


def test_nvdiffrast_on_cpu_tensors_is_a_clear_error():
    from cg_lightning.render.mesh.nvdiffrast_backend import NvdiffrastMeshRasterizer

    with pytest.raises(CGError, match="CUDA tensors"):
        NvdiffrastMeshRasterizer().rasterize(
            torch.zeros(1, 3, 4), torch.zeros(1, 3, dtype=torch.int32), (4, 4)
        )


# ---------------------------------------------------------------- renderer=auto and the gsplat warning


@pytest.mark.parametrize(
    "installed,expected",
    [({"inria", "gsplat"}, "inria"), ({"gsplat"}, "gsplat"), ({"inria"}, "inria"), (set(), "torch")],
)
def test_auto_prefers_the_official_rasterizer(monkeypatch, installed, expected):
    monkeypatch.setattr(gaussian_base, "_cuda_backend_available", lambda name: name in installed)
    assert gaussian_base.resolve_backend("auto") == expected
    assert gaussian_base.resolve_backend("torch") == "torch"


def test_gsplat_in_a_paper_experiment_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(gaussian_base, "_warned_gsplat", False)
    with caplog.at_level(logging.WARNING, logger="cg_lightning"):
        assert not gaussian_base.warn_if_deviating("gsplat", "smoke")
        assert not gaussian_base.warn_if_deviating("inria", "full")
        assert gaussian_base.warn_if_deviating("gsplat", "full")
        assert not gaussian_base.warn_if_deviating("gsplat", "dreamgaussian")  # once per process
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert "0.999" in messages[0] and "0.99)" in messages[0] and "3.33" in messages[0]
    assert "make install-gpu" in messages[0]


def test_build_passes_the_experiment_to_the_warning(monkeypatch, caplog):
    monkeypatch.setattr(gaussian_base, "_warned_gsplat", False)
    monkeypatch.setattr(gaussian_base, "_cuda_backend_available", lambda name: name == "gsplat")
    monkeypatch.setattr(
        "cg_lightning.render.gaussian.gsplat_backend._import_gsplat", lambda: types.SimpleNamespace()
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with caplog.at_level(logging.WARNING, logger="cg_lightning"):
        r = gaussian_base.build_gaussian_rasterizer("auto", "no_sr")
        gaussian_base.build_gaussian_rasterizer("auto", "no_sr")
    assert r.name == "gsplat"
    assert sum("gsplat" in rec.getMessage() for rec in caplog.records) == 1


def test_paper_experiments_match_the_config_tree():
    conf = Path(__file__).parents[1] / "conf" / "experiment"
    names = {p.stem for p in conf.glob("*.yaml")}
    assert gaussian_base.PAPER_EXPERIMENTS <= names
