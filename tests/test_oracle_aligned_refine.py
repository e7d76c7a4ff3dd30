"""The oracle's aligned refine (truth re-projected onto the caller's mesh), how stage 2 hands it the mesh, the noisy
oracle's perturbations on top of it, and stage 2's ``ref_mask`` option."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cg_lightning.cameras import orbit
from cg_lightning.data import ReferenceImage, ViewSampler
from cg_lightning.errors import ConfigError
from cg_lightning.mesh import Mesh
from cg_lightning.priors.noisy_oracle import NoisyOraclePrior
from cg_lightning.priors.oracle import OraclePrior, sample_coloured_surface
from cg_lightning.render.mesh import TorchMeshRasterizer, render_mesh
from cg_lightning.stages.texture_stage import TextureStage

TORUS = Path(__file__).resolve().parents[1] / "experiments" / "data" / "torus"
BOX = TORUS.parent / "box"
RES = 48
QUIET = dict(blur_sigma=(0.0, 0.0), gain_std=0.0, exposure_std=0.0, offset_std=0.0, elevation_error_deg=0.0,
             azimuth_error_deg=0.0, radius_error=0.0, wrong_content_prob=0.0)


def make(cls=OraclePrior, **kwargs) -> OraclePrior:
    kwargs.setdefault("refine_target", "aligned")
    p = cls(image=str(TORUS / "torus_rgba.png"), resolution=RES, rasterizer="torch", lookup_samples=60000, **kwargs)
    p.setup(torch.device("cpu"))
    p.set_reference(torch.ones(1, 3, RES, RES), elevation_deg=-15.0)
    return p


def views(*rows):
    t = torch.tensor(rows, dtype=torch.float32)
    return t[:, 0], t[:, 1], t[:, 2]


@pytest.fixture(scope="module")
def oracle() -> OraclePrior:
    return make()


def test_surface_samples_carry_the_texture_colours():
    mesh = Mesh.load(BOX / "model.glb")
    points, normals, colours = sample_coloured_surface(mesh, 5000, TorchMeshRasterizer(), seed=0)
    assert points.shape == normals.shape == colours.shape == (5000, 3)
    torch.testing.assert_close(normals.norm(dim=-1), torch.ones(5000))
    lo, hi = mesh.bounds()
    assert bool(((points >= lo - 1e-5) & (points <= hi + 1e-5)).all())
    assert float(colours.std(0).min()) > 0.05  # a coloured checker, not one grey
    again = sample_coloured_surface(mesh, 5000, TorchMeshRasterizer(), seed=0)
    assert torch.equal(again[0], points)  # fixed seed: every run looks up the same samples


def test_on_the_true_geometry_the_aligned_refine_is_the_true_render(oracle):
    truth = oracle.mesh
    de, da, dr = views((0.0, 40.0, 0.0), (20.0, 200.0, 0.1))
    aligned = oracle.refine(torch.rand(2, 3, RES, RES), de, da, dr, strength=0.8, geometry=truth)
    plain = oracle.render_views(de, da, dr)
    assert aligned.shape == plain.shape == (2, 3, RES, RES)
    # same coverage, colours within the texture's own variation (nearest sample vs. mip-filtered lookup)
    assert float((aligned - plain).abs().mean()) < 0.03


def test_on_a_larger_mesh_it_follows_the_mesh_not_the_true_silhouette(oracle):
    big = replace(oracle.mesh, v=oracle.mesh.v * 1.15)
    de, da, dr = views((0.0, 0.0, 0.0))
    image, covered = oracle.render_aligned(big, -15.0, 0.0, 2.0)
    cam = orbit(-15.0, 0.0, 2.0, 49.1, RES, RES)
    big_cov = render_mesh(big, cam, TorchMeshRasterizer(), 1.0, silhouette="binary").alpha > 0
    true_cov = render_mesh(oracle.mesh, cam, TorchMeshRasterizer(), 1.0, silhouette="binary").alpha > 0
    assert torch.equal(covered > 0, big_cov) and int((big_cov & ~true_cov).sum()) > 20
    outside = (big_cov & ~true_cov)[0]
    # where only the larger mesh is, the truth render is white; the aligned target has the surface colour there
    assert float((1.0 - image[:, outside]).abs().mean()) > 0.1
    assert torch.equal(image[:, ~big_cov[0]], torch.ones(3, int((~big_cov).sum())))
    plain = oracle.refine(torch.zeros(1, 3, RES, RES), de, da, dr, strength=0.8)  # no geometry: the true render
    torch.testing.assert_close(plain, oracle.render_views(de, da, dr))


def test_defaults_perfect_oracle_truth_noisy_oracle_aligned():
    assert OraclePrior(image=str(TORUS / "torus_rgba.png")).refine_target == "truth"
    assert NoisyOraclePrior(image=str(TORUS / "torus_rgba.png")).accepts_geometry


def test_truth_target_ignores_geometry_and_bad_config():
    p = make(refine_target="truth")
    assert not p.accepts_geometry
    de, da, dr = views((0.0, 30.0, 0.0))
    big = replace(p.mesh, v=p.mesh.v * 1.2)
    torch.testing.assert_close(p.refine(torch.zeros(1, 3, RES, RES), de, da, dr, 0.8, geometry=big),
                               p.render_views(de, da, dr))
    for bad in (dict(refine_target="nearest"), dict(lookup_samples=10), dict(lookup_neighbours=0)):
        with pytest.raises(ConfigError):
            OraclePrior(image=str(TORUS / "torus_rgba.png"), **bad)


def test_noisy_oracle_adds_its_errors_on_top_of_the_aligned_target(oracle):
    de, da, dr = views((0.0, 40.0, 0.0), (10.0, -60.0, 0.0))
    x = torch.rand(2, 3, RES, RES)
    aligned = oracle.refine(x, de, da, dr, 0.8, geometry=oracle.mesh)
    torch.manual_seed(3)
    quiet = make(NoisyOraclePrior, **QUIET).refine(x, de, da, dr, 0.8, geometry=oracle.mesh)
    torch.testing.assert_close(quiet, aligned)  # no errors drawn: the perfect aligned refine
    shifted = make(NoisyOraclePrior, **{**QUIET, "gain_std": 0.3, "azimuth_error_deg": 20.0})
    torch.manual_seed(3)
    out = shifted.refine(x, de, da, dr, 0.8, geometry=oracle.mesh)
    assert float((out - aligned).abs().mean()) > 0.005
    # the pose error is not applied to the aligned refine: the object's outline stays where the mesh is
    white = (aligned == 1.0).all(1)
    assert float((1.0 - out[white[:, None].expand_as(out)]).abs().max()) < 1e-6
    wrong = make(NoisyOraclePrior, **{**QUIET, "wrong_content_prob": 1.0, "wrong_content_modes": ["offset"]})
    torch.manual_seed(3)
    out = wrong.refine(x, de, da, dr, 0.8, geometry=oracle.mesh)
    assert all(s.wrong_content == "offset" for s in wrong.last_spoils)
    torch.testing.assert_close(out, torch.stack([wrong._render_spoiled(s) for s in wrong.last_spoils]))


class RecordingPrior:
    """Returns the render back; records the keyword arguments of each refine call."""

    resolution = 32

    def __init__(self, accepts: bool) -> None:
        self.accepts_geometry = accepts
        self.calls: list[dict] = []

    def setup(self, device) -> None: ...

    def set_reference(self, image, elevation_deg) -> None: ...

    def refine(self, images, d_elev, d_azim, d_radius, strength, steps=50, **kwargs):
        self.calls.append(kwargs)
        return images


def _stage(prior, **kwargs) -> TextureStage:
    mesh = Mesh.load(BOX / "model.glb")
    ref = ReferenceImage(torch.ones(3, 32, 32), torch.ones(1, 32, 32), elevation=0.0)
    return TextureStage(mesh=mesh, reference=ref, prior=prior, rasterizer=TorchMeshRasterizer(), steps=2,
                        ref_size=32, views=ViewSampler(batch_size=1, resolution=32, invert_bg_prob=0.0),
                        log_images_every_n_steps=0, **kwargs)


@pytest.mark.parametrize("accepts", [True, False])
def test_stage2_passes_its_mesh_only_to_priors_that_accept_it(accepts):
    prior = RecordingPrior(accepts)
    stage = _stage(prior)
    stage.compute_losses(stage.views.sample(0, 2))
    (kwargs,) = prior.calls
    if accepts:
        geometry = kwargs["geometry"]
        assert torch.equal(geometry.v, stage.v) and torch.equal(geometry.vt, stage.vt)
        assert not geometry.v.requires_grad
    else:
        assert kwargs == {}


def test_ref_mask_render_and_input_drops_pixels_where_the_input_is_background():
    stage = _stage(None, refine_weight=0.0)
    batch = stage.views.sample(0, 2)
    _, logs, _ = stage.compute_losses(batch)
    alpha = torch.zeros(1, 32, 32)
    alpha[:, :, :16] = 1.0  # the input shows the object on its left half only
    masked = _stage(None, refine_weight=0.0, ref_mask="render_and_input")
    masked.reference = ReferenceImage(torch.ones(3, 32, 32), alpha, elevation=0.0)
    _, logs_masked, _ = masked.compute_losses(batch)
    assert 0 < logs_masked["ref/ref_mask_fraction"] < logs["ref/ref_mask_fraction"]
    with pytest.raises(ConfigError):
        _stage(None, refine_weight=0.0, ref_mask="input")
