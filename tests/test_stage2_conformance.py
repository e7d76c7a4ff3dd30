"""TextureStage renders as DreamGaussian's / ContrastiveGaussian's stage 2 does (official defaults, named variants).

- a new random render scale for every render of a step (reference first, then each novel view), seeded per step;
- the texture logits mip-filtered, then the sigmoid; binary coverage alpha, also for the reference mask;
- DG's resize back; the former behaviour stays one option away (``ssaa_per=step``, ``texture_filter_space=albedo``,
  ``silhouette=antialiased``, ``ssaa_resize=antialiased``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cg_lightning.render.mesh as mesh_render
from cg_lightning.data.reference import ReferenceImage
from cg_lightning.errors import ConfigError
from cg_lightning.mesh import Mesh
from cg_lightning.render.mesh import TorchMeshRasterizer
from cg_lightning.render.mesh.render import ssaa_size
from cg_lightning.stages.texture_stage import TextureStage, sample_ssaa, sample_ssaa_scales

SIZE = 32


def quad_mesh() -> Mesh:
    v = torch.tensor([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.5, 0.5, 0.0], [-0.5, 0.5, 0.0]])
    vt = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    gen = torch.Generator().manual_seed(0)
    return Mesh(v=v, f=torch.tensor([[0, 1, 2], [0, 2, 3]]), vt=vt,
                albedo=torch.rand(16, 16, 3, generator=gen) * 0.8 + 0.1).auto_normals()


class ConstantPrior:
    """refine returns grey: enough to run the stage-2 step without any model."""

    def setup(self, device):
        pass

    def set_reference(self, image, elevation):
        pass

    def refine(self, images, d_elev, d_azim, d_radius, strength, steps=50):
        return torch.full_like(images, 0.5)


def make_stage(**kwargs) -> TextureStage:
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[8:24, 8:24] = 200
    args = dict(steps=5, ref_size=SIZE, refine_steps=2, log_images_every_n_steps=0, seed=7,
                views={"batch_size": 2, "resolution": SIZE, "invert_bg_prob": 0.0})
    args.update(kwargs)
    return TextureStage(mesh=quad_mesh(), reference=ReferenceImage.from_rgba(rgba, elevation=0.0),
                        prior=ConstantPrior(), rasterizer=TorchMeshRasterizer(), **args)


def record_renders(monkeypatch) -> list[dict]:
    calls: list[dict] = []
    real = mesh_render.render_mesh

    def spy(*args, **kwargs):
        calls.append({k: kwargs.get(k) for k in ("ssaa", "texture_activation", "silhouette", "resize")})
        return real(*args, **kwargs)

    monkeypatch.setattr(mesh_render, "render_mesh", spy)
    return calls


def test_one_random_scale_per_render(monkeypatch):
    """Official stage2.py draws ssaa before the reference render and before each novel view: 3 renders, 3 scales."""
    stage = make_stage()
    calls = record_renders(monkeypatch)
    step = 3
    stage.compute_losses(stage.views.sample(step, stage.steps, 0.0))
    got = [c["ssaa"] for c in calls]
    assert got == sample_ssaa_scales(7, step, 3)
    assert len(set(got)) == 3
    assert got[0] == sample_ssaa(7, step)  # the first draw is the one the per-step variant shares
    # same seed and step -> same scales (a resumed run draws what an uninterrupted one drew)
    assert stage.render_scales(step, 3) == got and stage.render_scales(step + 1, 3) != got


def test_per_step_scale_is_the_named_variant(monkeypatch):
    stage = make_stage(ssaa_per="step")
    calls = record_renders(monkeypatch)
    stage.compute_losses(stage.views.sample(2, stage.steps, 0.0))
    assert [c["ssaa"] for c in calls] == [sample_ssaa(7, 2)] * 3
    calls.clear()
    make_stage(random_ssaa=False).compute_losses(stage.views.sample(2, stage.steps, 0.0))
    assert [c["ssaa"] for c in calls] == [1.0] * 3


def test_scale_formula_and_render_size_match_the_official_schedule():
    """golden/schedules.npz: ssaa = min(2, max(0.125, 2u)); render size make_divisible(1024 ssaa, 8)."""
    for u, ssaa, h in [(0.0, 0.125, 128), (0.01, 0.125, 128), (0.1, 0.2, 208), (0.3337, 0.6674, 688),
                       (0.5, 1.0, 1024)]:
        assert min(2.0, max(0.125, 2 * u)) == pytest.approx(ssaa)
        assert ssaa_size(1024, min(2.0, max(0.125, 2 * u))) == h
    draws = [s for step in range(100) for s in sample_ssaa_scales(0, step, 3)]
    assert min(draws) >= 0.125 and max(draws) <= 2.0 and 0.125 in draws and len(set(draws)) > 250


def test_official_render_options_by_default_and_variants(monkeypatch):
    calls = record_renders(monkeypatch)
    make_stage().render_view(make_stage().reference_camera())
    assert calls[-1]["texture_activation"] == "sigmoid" and calls[-1]["silhouette"] == "binary"
    assert calls[-1]["resize"] == "bilinear"
    make_stage(texture_filter_space="albedo", silhouette="antialiased", ssaa_resize="antialiased").render_view(
        make_stage().reference_camera())
    assert calls[-1] == {"ssaa": 1.0, "texture_activation": "none", "silhouette": "antialiased",
                         "resize": "antialiased"}
    for bad in ({"ssaa_per": "batch"}, {"texture_filter_space": "rgb"}, {"silhouette": "soft"},
                {"ssaa_resize": "nearest"}):
        with pytest.raises(ConfigError):
            make_stage(**bad)


def test_logit_space_render_is_sigmoid_of_filtered_logits():
    """The stage's render equals sigmoid(filtered logits), not the filtered sigmoid, on a sharp-edged texture."""
    stage = make_stage()
    with torch.no_grad():
        n = stage.raw_albedo.shape[0]
        stripes = (torch.arange(n) % 2 == 0)[None, :, None].expand(n, n, 3)
        stage.raw_albedo.copy_(torch.where(stripes, -8.0, 2.0))
    cam = stage.reference_camera(8)  # far-away look: the stripes fall below one pixel (mip level > 0)
    logits_view = stage.render([cam]).image[0]
    albedo_view = make_stage(texture_filter_space="albedo").render([cam], raw_albedo=stage.raw_albedo).image[0]
    centre = logits_view[:, 4, 4]
    assert float(centre.max()) < 0.2 < float(albedo_view[:, 4, 4].min())


def test_reference_mask_uses_the_binary_alpha():
    """m = alpha > 0 & viewcos > 0.5 with alpha the binary coverage: the masked fraction is the covered fraction."""
    stage = make_stage(random_ssaa=False)
    out = stage.render([stage.reference_camera()])
    assert set(out.alpha.unique().tolist()) <= {0.0, 1.0}
    _, logs, _ = stage.compute_losses(stage.views.sample(0, stage.steps, 0.0))
    assert logs["ref/ref_mask_fraction"] == pytest.approx(float(((out.alpha > 0) & (out.viewcos > 0.5)).float().mean()))
    soft = make_stage(random_ssaa=False, silhouette="antialiased")
    soft_alpha = soft.render([soft.reference_camera()]).alpha
    assert bool(((soft_alpha > 0) & (soft_alpha < 1)).any())
