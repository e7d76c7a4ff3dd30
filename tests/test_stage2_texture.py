"""Stage 2 (TextureStage): real optimisation on the bundled box with the oracle prior, checkpoint and resume.

The box (experiments/data/box) has one hue and a checker per side on a 3x2 atlas, so a texture that only matches
what the input view shows scores badly elsewhere. Training starts from its geometry with a grey 0.5 texture; the
oracle prior's ``refine`` returns the ground-truth render of the queried view.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image

from cg_lightning.cameras import orbit
from cg_lightning.data.reference import ReferenceImage
from cg_lightning.errors import ConfigError, NonFiniteError
from cg_lightning.mesh.mesh import Mesh
from cg_lightning.priors.oracle import OraclePrior
from cg_lightning.render.mesh import TorchMeshRasterizer, render_mesh
from cg_lightning.stages.texture_stage import TextureStage, albedo_to_logits, sample_ssaa

BOX = Path(__file__).resolve().parents[1] / "experiments" / "data" / "box"
SIZE = 64         # render / reference size used in the tests


class RecordingOracle(OraclePrior):
    """The oracle prior, recording the refine strengths it was asked for."""

    def __init__(self, **kwargs) -> None:
        super().__init__(mesh_path=str(BOX / "model.glb"), resolution=SIZE, rasterizer="torch", **kwargs)
        self.calls: list[float] = []

    def refine(self, images, d_elev, d_azim, d_radius, strength, steps=50):
        self.calls.append(float(strength))
        return super().refine(images, d_elev, d_azim, d_radius, strength, steps)


@pytest.fixture(scope="module")
def rasterizer():
    return TorchMeshRasterizer()


@pytest.fixture(scope="module")
def gt_box() -> Mesh:
    return Mesh.load(BOX / "model.glb")


@pytest.fixture(scope="module")
def reference() -> ReferenceImage:
    return ReferenceImage.from_rgba(np.asarray(Image.open(BOX / "box_rgba.png")), elevation=0.0)


def grey_box(gt: Mesh) -> Mesh:
    return Mesh(v=gt.v, f=gt.f, vn=gt.vn, vt=gt.vt, albedo=torch.full_like(gt.albedo, 0.5))


def make_stage(reference, prior, rasterizer, mesh: Mesh, **overrides) -> TextureStage:
    kwargs = dict(steps=4, ref_size=SIZE, refine_steps=10, log_images_every_n_steps=0, seed=3,
                  views={"batch_size": 1, "resolution": SIZE, "invert_bg_prob": 0.0})
    kwargs.update(overrides)
    return TextureStage(mesh=mesh, reference=reference, prior=prior, rasterizer=rasterizer, **kwargs)


def make_trainer(max_steps: int, **kwargs) -> Trainer:
    return Trainer(max_steps=max_steps, max_epochs=-1, accelerator="cpu", devices=1, logger=False,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=0, inference_mode=False, **kwargs)


EVAL_VIEWS = [(0.0, 0.0), (0.0, 90.0), (0.0, 180.0), (0.0, -90.0), (-30.0, 45.0), (20.0, -135.0)]


def view_mse(stage: TextureStage, gt: Mesh, rasterizer, elev: float, azim: float) -> float:
    cam = orbit(elev, azim, 2.0, width=SIZE, height=SIZE)
    return float(torch.mean((stage.render_view(cam) - render_mesh(gt, cam, rasterizer, 1.0).image) ** 2))


def novel_view_mse(stage: TextureStage, gt: Mesh, rasterizer) -> float:
    return float(np.mean([view_mse(stage, gt, rasterizer, e, a) for e, a in EVAL_VIEWS]))


# ------------------------------------------------------------------------------------------------ unit behaviour
def test_parameters_are_texture_logits_and_optional_offsets(reference, rasterizer, gt_box):
    stage = make_stage(reference, None, rasterizer, gt_box, refine_weight=0.0)
    assert torch.allclose(stage.albedo, gt_box.albedo.clamp(1e-6, 1 - 1e-6), atol=1e-5)
    assert [n for n, _ in stage.named_parameters()] == ["raw_albedo"]
    geo = make_stage(reference, None, rasterizer, gt_box, refine_weight=0.0, train_geo=True)
    assert sorted(n for n, _ in geo.named_parameters()) == ["raw_albedo", "v_offsets"]
    groups = geo.configure_optimizers().param_groups
    assert [(g["name"], g["lr"]) for g in groups] == [("texture", 0.2), ("geometry", 1e-4)]
    untextured = make_stage(reference, None, rasterizer, Mesh(v=gt_box.v, f=gt_box.f, vt=gt_box.vt),
                            refine_weight=0.0, default_texture_size=32)
    assert untextured.raw_albedo.shape == (32, 32, 3) and torch.allclose(untextured.albedo, torch.tensor(0.5))
    assert torch.isfinite(albedo_to_logits(torch.tensor([0.0, 1.0]))).all()


def test_rejects_mesh_without_uvs_and_bad_config(reference, rasterizer, gt_box):
    with pytest.raises(ConfigError, match="UV"):
        make_stage(reference, None, rasterizer, Mesh(v=gt_box.v, f=gt_box.f))
    with pytest.raises(ConfigError, match="views"):
        make_stage(reference, None, rasterizer, gt_box, refine_weight=0.0, views={"batch_sise": 2})
    with pytest.raises(ConfigError, match="no prior"):
        make_stage(reference, None, rasterizer, gt_box)


def test_ssaa_is_seeded_and_in_range():
    values = [sample_ssaa(0, s) for s in range(200)]
    assert min(values) >= 0.125 and max(values) <= 2.0
    assert sum(v == 0.125 for v in values) > 0 and len(set(values)) > 100  # the clamp is hit, the rest varies
    assert values == [sample_ssaa(0, s) for s in range(200)] and values != [sample_ssaa(1, s) for s in range(200)]


def test_export_mesh_applies_sigmoid_and_offsets(reference, rasterizer, gt_box):
    stage = make_stage(reference, None, rasterizer, gt_box, refine_weight=0.0, train_geo=True)
    with torch.no_grad():
        stage.raw_albedo.fill_(2.0)
        stage.v_offsets.fill_(0.1)
    mesh = stage.export_mesh()
    assert torch.allclose(mesh.albedo, torch.sigmoid(torch.tensor(2.0)))
    assert torch.allclose(mesh.v, gt_box.v + 0.1) and not mesh.v.requires_grad
    assert torch.equal(mesh.vt, gt_box.vt) and torch.equal(mesh.f, gt_box.f) and mesh.vn.shape == gt_box.v.shape


# ------------------------------------------------------------------------------------------------ training
def test_oracle_refinement_reduces_novel_view_error(reference, rasterizer, gt_box):
    prior = RecordingOracle()
    stage = make_stage(reference, prior, rasterizer, grey_box(gt_box), steps=5,
                       views={"batch_size": 2, "resolution": SIZE, "invert_bg_prob": 0.0})
    before = novel_view_mse(stage, gt_box, rasterizer)
    make_trainer(stage.steps).fit(stage)
    after = novel_view_mse(stage, gt_box, rasterizer)
    assert after < 0.6 * before, (before, after)
    # the strength schedule 0.8 + 0.15 r, r = (step + 1) / steps, once per step (one batched call)
    assert prior.calls == pytest.approx([0.8 + 0.15 * (s + 1) / 5 for s in range(5)])


def test_reference_loss_alone_fits_only_what_the_input_shows(reference, rasterizer, gt_box):
    stage = make_stage(reference, None, rasterizer, grey_box(gt_box), steps=4, refine_weight=0.0,
                       random_ssaa=False)
    front0, back0 = view_mse(stage, gt_box, rasterizer, 0, 0), view_mse(stage, gt_box, rasterizer, 0, 180)
    make_trainer(stage.steps).fit(stage)
    front, back = view_mse(stage, gt_box, rasterizer, 0, 0), view_mse(stage, gt_box, rasterizer, 0, 180)
    assert front < 0.5 * front0, (front0, front)
    # texels only the back view sees get no gradient (only mip levels shared with visible tiles move a little)
    assert abs(back - back0) < 0.1 * (front0 - front), (back0, back)


def test_train_geo_moves_vertices_with_the_geometry_lr(reference, rasterizer, gt_box):
    stage = make_stage(reference, RecordingOracle(), rasterizer, grey_box(gt_box), steps=2, train_geo=True)
    make_trainer(2).fit(stage)
    offsets = stage.v_offsets.detach()
    assert torch.isfinite(offsets).all() and offsets.abs().max() > 0
    assert offsets.abs().max() <= 2 * 1e-4 + 1e-7  # Adam moves each coordinate by at most ~lr per step
    assert stage.trainer.logged_metrics["stage2/lr/geometry"] == pytest.approx(1e-4)
    assert not torch.equal(stage.export_mesh().v, gt_box.v)


def test_checkpoint_holds_texture_not_prior_and_resume_is_exact(reference, rasterizer, gt_box, tmp_path):
    oracle = RecordingOracle()
    full = make_stage(reference, oracle, rasterizer, grey_box(gt_box), steps=4)
    make_trainer(4).fit(full)

    first = make_stage(reference, oracle, rasterizer, grey_box(gt_box), steps=4)
    trainer = make_trainer(2)
    trainer.fit(first)
    ckpt = tmp_path / "half.ckpt"
    trainer.save_checkpoint(ckpt)
    sd = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert set(sd) == {"raw_albedo", "v", "f", "vt"}
    assert torch.equal(sd["raw_albedo"], first.raw_albedo.detach())

    resumed = make_stage(reference, oracle, rasterizer, grey_box(gt_box), steps=4)
    assert not torch.equal(resumed.raw_albedo, first.raw_albedo)
    make_trainer(4).fit(resumed, ckpt_path=str(ckpt))
    assert torch.allclose(resumed.raw_albedo, full.raw_albedo, atol=1e-6)  # same views / scales / Adam state
    # export straight from a checkpoint (no prior, no stage)
    mesh = TextureStage.mesh_from_checkpoint(ckpt)
    assert torch.allclose(mesh.albedo, torch.sigmoid(first.raw_albedo.detach())) and torch.equal(mesh.f, gt_box.f)


def test_resume_with_another_mesh_is_refused(reference, rasterizer, gt_box, tmp_path):
    stage = make_stage(reference, None, rasterizer, gt_box, steps=1, refine_weight=0.0)
    trainer = make_trainer(1)
    trainer.fit(stage)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    other = make_stage(reference, None, rasterizer, Mesh(v=gt_box.v, f=gt_box.f, vt=gt_box.vt), steps=2,
                       refine_weight=0.0, default_texture_size=16)
    with pytest.raises(ConfigError, match="another mesh"):
        make_trainer(2).fit(other, ckpt_path=str(tmp_path / "a.ckpt"))


class NaNPrior(RecordingOracle):
    def refine(self, images, *args, **kwargs):
        return torch.full_like(images, math.nan)


def test_nonfinite_steps_are_skipped_then_stop(reference, rasterizer, gt_box):
    tolerant = make_stage(reference, NaNPrior(), rasterizer, grey_box(gt_box), steps=2, max_nonfinite_steps=3)
    before = tolerant.raw_albedo.detach().clone()
    trainer = make_trainer(2)
    trainer.fit(tolerant)
    assert trainer.global_step == 2 and tolerant.skipped_steps == 2  # skipped steps still count as steps
    assert torch.equal(tolerant.raw_albedo.detach(), before)  # but change nothing (no NaN reached the texture)
    strict = make_stage(reference, NaNPrior(), rasterizer, grey_box(gt_box), steps=10, max_nonfinite_steps=3)
    with pytest.raises(NonFiniteError, match="3 consecutive"):
        make_trainer(10).fit(strict)
    assert torch.equal(strict.raw_albedo.detach(), before)


def test_logs_are_prefixed_and_images_reach_log_image(reference, rasterizer, gt_box, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    class ImageCSV(CSVLogger):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.images = []

        def log_image(self, key, images, **kwargs):
            self.images.append((key, images, kwargs))

    logger = ImageCSV(save_dir=str(tmp_path))
    stage = make_stage(reference, RecordingOracle(), rasterizer, grey_box(gt_box), steps=2,
                       log_images_every_n_steps=1, views={"batch_size": 2, "resolution": SIZE})
    Trainer(max_steps=2, accelerator="cpu", logger=logger, log_every_n_steps=1, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False).fit(stage)
    keys = set(stage.trainer.logged_metrics)
    for k in ("loss/ref", "loss/ref_w", "loss/refine", "loss/refine_w", "loss/total", "weight/ref", "lr/texture",
              "strength", "ssaa", "step", "skipped_steps"):
        assert f"stage2/{k}" in keys, k
    assert all(k.startswith("stage2/") for k in keys)
    assert len(logger.images) == 2 and logger.images[0][0] == "stage2/views"
    grid = logger.images[0][1][0]
    assert grid.dtype.name == "uint8" and grid.shape == (256, 256 * 6, 3)  # ref render, input, 2 novel, 2 refined


def test_tiny_zero123_smoke_64px_keeps_prior_out_of_checkpoint(reference, rasterizer, gt_box, tmp_path):
    from cg_lightning.priors.tiny import TinyZero123Prior

    prior = TinyZero123Prior(seed=0, cache_dir=str(tmp_path / "cache"))
    stage = make_stage(reference, prior, rasterizer, grey_box(gt_box), steps=2,
                       views={"batch_size": 1, "resolution": SIZE})
    before = stage.raw_albedo.detach().clone()
    trainer = make_trainer(2)
    trainer.fit(stage)
    assert torch.isfinite(stage.raw_albedo).all() and not torch.equal(stage.raw_albedo.detach(), before)
    assert trainer.global_step == 2
    trainer.save_checkpoint(tmp_path / "tiny.ckpt")
    sd = torch.load(tmp_path / "tiny.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert set(sd) == {"raw_albedo", "v", "f", "vt"}  # no unet/vae/image_encoder weights
    assert prior.c is not None  # the prior really was set up (its modules exist, outside the checkpoint)
