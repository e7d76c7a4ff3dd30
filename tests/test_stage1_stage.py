"""GaussianStage end to end on CPU: tiny Zero123 prior, torch rasterizer, 64 px, a few hundred Gaussians."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers.logger import Logger

from cg_lightning.data import ReferenceImage, ViewSampler
from cg_lightning.errors import NonFiniteError
from cg_lightning.losses import QATripletLoss, ReferenceAlphaLoss, ReferenceRGBLoss, SDSLoss
from cg_lightning.losses.base import LossTerm
from cg_lightning.schedules import LinearRamp
from cg_lightning.stages.gaussian_stage import GaussianStage

CONF = Path(__file__).resolve().parents[1] / "conf"
SIZE = 64


def reference_image(size: int = SIZE) -> ReferenceImage:
    """A red disc with a blue stripe on a transparent background."""
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.3) ** 2
    img = np.zeros((size, size, 4), np.uint8)
    img[inside] = (220, 40, 40, 255)
    img[inside & (np.abs(yy - size / 2) < size * 0.06)] = (40, 40, 220, 255)
    return ReferenceImage.from_rgba(img, elevation=0.0)


def density(**kw):
    from cg_lightning.gaussians.density import DensityController

    args = dict(grad_threshold=1e-5, densify_from=3, densify_until=100, interval=3, opacity_reset_interval=1000)
    args.update(kw)
    return DensityController(**args)


def rasterizer():
    from cg_lightning.render.gaussian.base import build_gaussian_rasterizer

    return build_gaussian_rasterizer("torch")


def tiny_prior():
    from cg_lightning.priors.tiny import TinyZero123Prior

    return TinyZero123Prior()


def reference_losses() -> dict[str, LossTerm]:
    return {"reference_rgb": ReferenceRGBLoss(LinearRamp(0.0, 1e4)),
            "reference_alpha": ReferenceAlphaLoss(LinearRamp(0.0, 1e3))}


def make_stage(steps: int, losses: dict, prior=None, batch_size: int = 1, num_points: int = 300, **kw) -> GaussianStage:
    kw.setdefault("density", density())
    return GaussianStage(reference=reference_image(), prior=prior, rasterizer=rasterizer(), losses=losses,
                         views=ViewSampler(batch_size=batch_size, resolution=SIZE), steps=steps, ref_size=SIZE,
                         num_points=num_points, seed=3, **kw)


def make_trainer(tmp: Path, max_steps: int, logger=None, callbacks=()) -> L.Trainer:
    ckpt = ModelCheckpoint(dirpath=str(tmp / "ckpts"), save_last=True, save_top_k=0, every_n_train_steps=1)
    return L.Trainer(max_steps=max_steps, max_epochs=-1, accelerator="cpu", devices=1, logger=logger or False,
                     callbacks=[ckpt, *callbacks], enable_progress_bar=False, enable_model_summary=False,
                     inference_mode=False, num_sanity_val_steps=0, log_every_n_steps=1, default_root_dir=str(tmp))


class RecordingLogger(Logger):
    """Collects metrics and images (it has ``log_image`` like WandbLogger)."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[dict] = []
        self.images: list[tuple] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> str:
        return "0"

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append(dict(metrics))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_image(self, key, images, step=None, **kwargs) -> None:
        self.images.append((key, images, kwargs))


# ------------------------------------------------------------------------------------------------------ tests
def test_contrastive_fit_writes_ply_and_checkpoint(tmp_path):
    from cg_lightning.gaussians.ply import load_ply
    from cg_lightning.perceptual.lpips import LPIPS

    torch.manual_seed(0)
    losses = {**reference_losses(), "sds": SDSLoss(1.0),
              "qa_triplet": QATripletLoss(variant="official", lpips=LPIPS(net="vgg", pretrained=False))}
    stage = make_stage(6, losses, prior=tiny_prior(), batch_size=2, image_log_every_n_steps=3)
    logger = RecordingLogger()
    trainer = make_trainer(tmp_path, 6, logger=logger)
    trainer.fit(stage)
    assert trainer.global_step == 6 and stage.skipped_steps == 0

    ckpt = tmp_path / "ckpts" / "last.ckpt"
    assert ckpt.is_file()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    prefixes = {k.split(".")[0] for k in state["state_dict"]}
    assert prefixes == {"gaussians", "density"}, prefixes          # no prior / LPIPS / rasterizer weights
    assert state["stage1"]["skipped_steps"] == 0

    ply = stage.export_ply(tmp_path / "out" / "point_cloud.ply")
    loaded = load_ply(ply)
    assert loaded.num_points == stage.gaussians.num_points > 0
    assert torch.allclose(loaded.xyz, stage.gaussians.xyz.detach())

    keys = set().union(*logger.metrics)
    for key in ("stage1/loss", "stage1/loss/sds", "stage1/loss/sds_w", "stage1/loss/reference_rgb_w",
                "stage1/loss/qa_triplet", "stage1/qa_triplet/num_pos", "stage1/qa_triplet/num_neg",
                "stage1/qa_triplet/lpips_0", "stage1/qa_triplet/lpips_1", "stage1/sds/timestep",
                "stage1/num_gaussians", "stage1/lr/xyz", "stage1/lr/opacity", "stage1/weight/reference_rgb",
                "stage1/skipped_steps"):
        assert key in keys, key
    last = logger.metrics[-1]
    assert last["stage1/lr/xyz"] == pytest.approx(2e-4, rel=1e-5)        # log-linear schedule end
    assert last["stage1/weight/reference_rgb"] == pytest.approx(1e4)
    assert last["stage1/sds/timestep"] == 20.0                            # annealed t at r = 1
    pn = [m["stage1/qa_triplet/num_pos"] + m["stage1/qa_triplet/num_neg"] for m in logger.metrics
          if "stage1/qa_triplet/num_pos" in m]
    assert pn and set(pn) == {2.0}
    assert [k for k, _, _ in logger.images] == ["stage1/views", "stage1/guidance"] * 2   # every 3 of 6 steps
    assert "step 2" in logger.images[0][2]["caption"][0]   # rendered in 0-based step 2 (logged at step 2)
    assert logger.images[1][1][0].shape == (2 * SIZE + 6, 2 * SIZE + 6, 3)               # renders over refined
    grid = logger.images[0][1][0]
    assert grid.dtype == np.uint8 and grid.shape[0] == SIZE + 4 and grid.shape[1] == 4 * (SIZE + 2) + 2


class Killed(RuntimeError):
    pass


class StopAt(Callback):
    """Simulates a killed job: raise before step ``k`` runs (last.ckpt holds step k)."""

    def __init__(self, k: int) -> None:
        self.k = k

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.k:
            raise Killed


def test_resume_mid_run_reproduces_the_uninterrupted_run(tmp_path):
    steps, k = 8, 4
    losses = {**reference_losses(), "sds": SDSLoss(1.0)}
    full = make_stage(steps, losses, prior=tiny_prior())
    make_trainer(tmp_path / "full", steps).fit(full)

    first = make_stage(steps, {**reference_losses(), "sds": SDSLoss(1.0)}, prior=tiny_prior())
    trainer = make_trainer(tmp_path / "resumed", steps, callbacks=[StopAt(k)])
    with pytest.raises(Killed):
        trainer.fit(first)
    assert trainer.global_step == k
    ckpt = tmp_path / "resumed" / "ckpts" / "last.ckpt"
    saved_n = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]["gaussians.xyz"].shape[0]
    assert saved_n != 300, "densification must have changed the count before the interruption"

    resumed = make_stage(steps, {**reference_losses(), "sds": SDSLoss(1.0)}, prior=tiny_prior())
    assert resumed.gaussians.num_points == 300
    trainer = make_trainer(tmp_path / "resumed", steps)
    trainer.fit(resumed, ckpt_path=str(ckpt))
    assert trainer.global_step == steps
    assert resumed.gaussians.num_points == full.gaussians.num_points
    assert torch.allclose(resumed.gaussians.xyz, full.gaussians.xyz, atol=1e-5)
    assert torch.allclose(resumed.gaussians.opacity, full.gaussians.opacity, atol=1e-5)


class NaNAt(LossTerm):
    def __init__(self, bad_steps) -> None:
        super().__init__(1.0)
        self.bad_steps = set(bad_steps)

    def forward(self, ctx, logs):
        value = ctx.ref_render.mean()
        return value * float("nan") if ctx.step in self.bad_steps else value


class Snapshot(Callback):
    def __init__(self) -> None:
        self.xyz: dict[int, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.xyz[trainer.global_step] = pl_module.gaussians.xyz.detach().clone()


def test_non_finite_steps_are_skipped_then_fatal(tmp_path):
    snap = Snapshot()
    stage = make_stage(6, {**reference_losses(), "nan": NaNAt({2})}, density=density(densify_from=1000))
    trainer = make_trainer(tmp_path / "a", 6, callbacks=[snap])
    trainer.fit(stage)
    assert trainer.global_step == 6 and stage.skipped_steps == 1
    assert torch.equal(snap.xyz[2], snap.xyz[3])          # the bad step (index 2) did not move the Gaussians
    assert not torch.equal(snap.xyz[3], snap.xyz[4])

    stage = make_stage(6, {**reference_losses(), "nan": NaNAt(range(10))}, max_consecutive_bad_steps=3)
    with pytest.raises(NonFiniteError):
        make_trainer(tmp_path / "b", 6).fit(stage)
    assert stage.skipped_steps == 3


def test_prior_module_is_never_registered():
    class ModulePrior(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = torch.nn.Linear(4, 4)

    stage = make_stage(4, reference_losses(), prior=ModulePrior())
    keys = list(stage.state_dict())
    assert keys and all(k.startswith(("gaussians.", "density.")) for k in keys), keys
    assert not any("unet" in k or "ref_rgb" in k for k in keys)
    assert isinstance(stage.prior, ModulePrior) and "prior" not in dict(stage.named_modules())


@pytest.mark.parametrize("name, batch, ref, res", [("dreamgaussian", 1, 256, (128, 256, 512)),
                                                   ("contrastive", 2, 1024, (512, 512, 1024))])
def test_stage_configs_instantiate_like_the_pipeline(name, batch, ref, res):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(config_name=f"stage1/{name}", overrides=["stage1.num_points=50"])
    stage = instantiate(cfg.stage1, reference=reference_image(), prior=None, rasterizer=rasterizer(),
                        losses={"reference_rgb": ReferenceRGBLoss()}, _recursive_=False)
    assert stage.steps == 500 and stage.ref_size == ref and stage.views.batch_size == batch
    assert tuple(stage.views.resolution_at(s, 500) for s in (0, 150, 499)) == res
    assert stage.gaussians.num_points == 50 and tuple(stage.ref_rgb.shape) == (1, 3, ref, ref)
    opt = stage.configure_optimizers()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"xyz": 0.01, "features_dc": 0.01, "features_rest": 0.0005, "opacity": 0.05, "scaling": 0.005,
                   "rotation": 0.005}
    assert opt.defaults["eps"] == 1e-15
    assert stage.xyz_schedule(1) == pytest.approx(0.01 * (2e-4 / 0.01) ** (1 / 500))
    assert stage.xyz_schedule(500) == pytest.approx(2e-4)
    assert type(stage.density).__name__ == "DensityController"


def test_wandb_media_images_and_point_cloud(tmp_path):
    wandb = pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    class FakeRun:
        def __init__(self) -> None:
            self.logged: list[dict] = []

        def log(self, data, *args, **kwargs) -> None:
            self.logged.append(dict(data))

        def __getattr__(self, name):  # config.update, define_metric, ...
            return _Anything()

    class _Anything:
        def __getattr__(self, name):
            return self

        def __call__(self, *args, **kwargs):
            return self

    logger = WandbLogger(offline=True, save_dir=str(tmp_path))
    run = FakeRun()
    logger._experiment = run
    stage = make_stage(2, reference_losses(), image_log_every_n_steps=1, point_cloud_max_points=100)
    make_trainer(tmp_path, 2, logger=logger).fit(stage)
    images = [d["stage1/views"] for d in run.logged if "stage1/views" in d]
    assert len(images) == 2 and isinstance(images[0][0], wandb.Image)
    clouds = [d["stage1/gaussians"] for d in run.logged if "stage1/gaussians" in d]
    assert len(clouds) == 1 and isinstance(clouds[0], wandb.Object3D)
    assert any("stage1/loss/reference_rgb" in d and "trainer/global_step" in d for d in run.logged)
