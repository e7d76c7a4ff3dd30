"""Evaluation protocol: reference compositing, LPIPS at the reference view, kiui-style CLIP similarity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.tiny_models import single_thread
from omegaconf import OmegaConf

from cg_lightning.cameras import Camera
from cg_lightning.errors import InputImageError
from cg_lightning.evaluation import metrics as M
from cg_lightning.evaluation.mesh_view import ScorableMesh, yaw_rotation
from cg_lightning.mesh.mesh import Mesh
from cg_lightning.perceptual.lpips import LPIPS
from cg_lightning.render.mesh import build_mesh_rasterizer

_threads = pytest.fixture(autouse=True)(single_thread)
ROOT = Path(__file__).resolve().parents[1]
BOX = ROOT / "experiments" / "data" / "box"
SIZE = 64


def rgba_of(sm: ScorableMesh, camera: Camera, rast) -> np.ndarray:
    """Straight-alpha RGBA uint8 of a render (what a saved cut-out image holds)."""
    premult, alpha = sm.render(camera, rast, bg_color=0.0)
    a = alpha.clamp_min(1e-6)
    rgb = torch.where(alpha > 0, premult / a, torch.zeros_like(premult)).clamp(0, 1)
    out = torch.cat([rgb, alpha], 0).permute(1, 2, 0).numpy()
    return (out * 255 + 0.5).astype(np.uint8)


class PixelEncoder:
    """A transparent 'CLIP': the embedding is the 8x8 downsampled image, so similarities are predictable."""

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        small = F.adaptive_avg_pool2d(images.float(), 8).flatten(1) - 0.5
        return F.normalize(small, dim=-1)


@pytest.fixture(scope="module")
def rast():
    return build_mesh_rasterizer("torch")


@pytest.fixture(scope="module")
def box() -> ScorableMesh:
    return ScorableMesh(Mesh.load(BOX / "model.glb"))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> str:
    from helpers.tiny_models import build_tiny_clip

    return str(build_tiny_clip(tmp_path_factory.mktemp("tiny_clip")))


@pytest.fixture(scope="module")
def lpips_model():
    torch.manual_seed(0)
    return LPIPS(net="alex", normalize=True, pretrained=False)


def test_reference_on_white_composites_and_resizes():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255            # red everywhere ...
    rgba[0, :, 3] = 255           # ... opaque in row 0
    rgba[1, :, 3] = 128           # half in row 1, transparent elsewhere
    ref = M.reference_rgb_on_white(rgba, 4)
    assert ref.shape == (1, 3, 4, 4)
    assert torch.allclose(ref[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(ref[0, :, 1, 0], torch.tensor([1.0, 1 - 128 / 255, 1 - 128 / 255]), atol=1e-6)
    assert torch.allclose(ref[0, :, 3, 0], torch.ones(3))
    # RGB input = opaque; non-square input is padded (transparent -> white), not stretched
    wide = np.zeros((2, 4, 3), np.uint8)
    ref2 = M.reference_rgb_on_white(wide, 4)
    assert torch.allclose(ref2[0, :, 0], torch.ones(3, 4)) and torch.allclose(ref2[0, :, 1], torch.zeros(3, 4))
    with pytest.raises(InputImageError):
        M.reference_rgb_on_white(np.zeros((4, 4), np.uint8), 4)


def test_clip_azimuths_match_kiui():
    assert M.clip_azimuths(8) == [0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0]


def test_lpips_reference_view_is_zero_for_the_input_view_and_uses_elevation(box, rast, lpips_model):
    from cg_lightning.cameras import orbit

    ref_high = rgba_of(box, orbit(-30.0, 0.0, 2.0, 49.1, SIZE, SIZE), rast)
    render = box.render_fn(rast)
    same = M.lpips_reference_view(render, ref_high, lpips_model, elevation_deg=-30.0, size=SIZE)
    wrong = M.lpips_reference_view(render, ref_high, lpips_model, elevation_deg=0.0, size=SIZE)
    assert same < 0.02 and wrong > same + 0.02
    # a model built for [-1,1] inputs (normalize=False) gets rescaled images: same value
    torch.manual_seed(0)
    raw = LPIPS(net="alex", normalize=False, pretrained=False)
    assert M.lpips_reference_view(render, ref_high, raw, elevation_deg=0.0, size=SIZE) == pytest.approx(wrong,
                                                                                                    rel=1e-5)


def test_clip_similarity_protocol_with_a_pixel_encoder(box, rast):
    from cg_lightning.cameras import orbit

    ref = rgba_of(box, orbit(0.0, 0.0, 2.0, 49.1, SIZE, SIZE), rast)
    sims = M.clip_similarity_per_view(box.render_fn(rast), ref, PixelEncoder(), n_views=4, size=SIZE)
    assert len(sims) == 4
    assert sims[0] == pytest.approx(1.0, abs=2e-3)        # azimuth 0 is the input view
    assert min(sims[1:]) < sims[0] - 0.01                  # other sides of the box look different
    mean = M.clip_similarity(box.render_fn(rast), ref, PixelEncoder(), n_views=4, size=SIZE)
    assert mean == pytest.approx(float(np.mean(sims)))


def _cfg(clip_dir: str | None = None, **over):
    base = {"lpips": {"_target_": "cg_lightning.perceptual.lpips.LPIPS", "net": "alex", "normalize": True,
                      "pretrained": False},
            "clip": {"_target_": "cg_lightning.perceptual.clip.CLIPImageEncoder", "model": clip_dir},
            "views": 4, "elevation": 0.0, "radius": 2.0, "fovy": 49.1, "size": SIZE, "clip_camera": None,
            "mesh_renderer": "torch"}
    base.update(over)
    return OmegaConf.create(base)


def test_evaluate_mesh_keys_and_ordering(box, rast, clip_dir):
    from cg_lightning.cameras import orbit

    M.release_eval_models()
    ref = rgba_of(box, orbit(0.0, 0.0, 2.0, 49.1, SIZE, SIZE), rast)
    cfg = _cfg(clip_dir)
    good = M.evaluate_mesh(box.mesh, ref, cfg_eval=cfg, device="cpu", elevation_deg=0.0)
    assert set(good) == {"eval/lpips", "eval/clip_similarity"}
    turned = box.transformed(linear=yaw_rotation(90.0))
    bad = M.evaluate_mesh(turned, ref, cfg_eval=cfg, device="cpu", elevation_deg=0.0)
    assert good["eval/lpips"] < 0.02 < bad["eval/lpips"]
    assert -1.0 <= bad["eval/clip_similarity"] <= 1.0 and -1.0 <= good["eval/clip_similarity"] <= 1.0
    # the scorers are built once per config and device
    assert M.build_eval_models(cfg, "cpu") is M.build_eval_models(cfg, "cpu")
    M.release_eval_models()


def test_clip_camera_override_changes_the_views(box, rast):
    seen: list[tuple[float, int]] = []

    def render(camera: Camera) -> torch.Tensor:
        seen.append((round(float(camera.position.norm()), 3), camera.width))
        return box.render(camera, rast)[0]

    ref = np.full((SIZE, SIZE, 4), 255, np.uint8)
    models = M.EvalModels(lpips=lambda x, y: (x - y).abs().mean(dim=(1, 2, 3)), clip=PixelEncoder())
    M.evaluate_render(render, ref, cfg_eval=_cfg(clip_camera={"radius": 3.0, "size": 32}), device="cpu",
                      elevation_deg=0.0, models=models)
    assert seen[0] == (2.0, SIZE)                # LPIPS: the training camera
    assert seen[1:] == [(3.0, 32)] * 4           # CLIP: kiui-like camera


def test_evaluate_gaussians_uses_the_gaussian_rasterizer(rast):
    calls = []

    class FakeGaussianRasterizer:  # records cameras; renders a flat grey image
        def render(self, model, camera, bg_color, scale_modifier=1.0):
            calls.append(camera)

            class Out:
                image = torch.full((3, camera.height, camera.width), 0.5)
            return Out()

    ref = np.full((SIZE, SIZE, 4), 128, np.uint8)
    models = M.EvalModels(lpips=lambda x, y: (x - y).abs().mean(dim=(1, 2, 3)), clip=PixelEncoder())
    out = M.evaluate_gaussians(object(), FakeGaussianRasterizer(), ref, cfg_eval=_cfg(), device="cpu",
                               elevation_deg=-20.0, models=models)
    assert set(out) == {"eval/stage1_lpips", "eval/stage1_clip_similarity"}
    assert len(calls) == 5
    # first camera = reference view at elevation -20 (above the object: +y)
    assert float(calls[0].position[1]) == pytest.approx(2.0 * np.sin(np.radians(20.0)), abs=1e-4)
