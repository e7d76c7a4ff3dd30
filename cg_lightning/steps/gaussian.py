"""Stage 1 step: fit 3D Gaussians to the reference image under the diffusion prior (resumable)."""

from __future__ import annotations

import logging
import time

from hydra.utils import instantiate

from cg_lightning.runtime.context import JobContext, with_runtime_objects
from cg_lightning.runtime.trainer import build_trainer, fit_resumable

log = logging.getLogger(__name__)


def build_gaussian_stage(ctx: JobContext):
    from cg_lightning.data.reference import ReferenceImage
    from cg_lightning.render.gaussian import build_gaussian_rasterizer

    reference = ReferenceImage.from_rgba(ctx.reference_rgba, elevation=float(ctx.cfg.elevation))
    rasterizer = build_gaussian_rasterizer(ctx.cfg.renderer.gaussian, ctx.cfg.get("experiment_name"))
    losses = instantiate(ctx.cfg.loss)
    return with_runtime_objects(ctx.cfg.stage1, reference=reference, prior=ctx.prior(), rasterizer=rasterizer,
                                losses=losses)


def run_stage1(ctx: JobContext) -> None:
    if ctx.state.is_done("stage1") and ctx.layout.gaussians_ply.is_file():
        log.info("stage1: already finished, reusing %s", ctx.layout.gaussians_ply)
        return
    t0 = time.perf_counter()
    stage = build_gaussian_stage(ctx)
    trainer = build_trainer(ctx.cfg, stage="stage1", max_steps=stage.steps, output_dir=ctx.output_dir,
                            device=ctx.device, loggers=ctx.loggers.for_stage("stage1"),
                            extra_callbacks=ctx.loggers.callbacks())
    fit_resumable(trainer, stage, output_dir=ctx.output_dir, stage="stage1", resume=ctx.cfg.resume)
    stage.export_ply(ctx.layout.gaussians_ply)
    seconds = time.perf_counter() - t0
    ctx.record({"time/stage1_s": seconds, "stage1/final_num_gaussians": float(stage.gaussians.num_points)})
    ctx.state.mark_done("stage1", seconds)
    log.info("stage1: done in %.1f s -> %s", seconds, ctx.layout.gaussians_ply)
