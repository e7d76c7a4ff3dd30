"""Stage 2 step: refine the baked texture with the prior's multi-step denoise (resumable)."""

from __future__ import annotations

import logging
import time

from cg_lightning.errors import CGError
from cg_lightning.runtime.context import JobContext, with_runtime_objects
from cg_lightning.runtime.trainer import build_trainer, fit_resumable

log = logging.getLogger(__name__)


def run_stage2(ctx: JobContext) -> None:
    from cg_lightning.data.reference import ReferenceImage
    from cg_lightning.mesh.export import write_glb, write_obj
    from cg_lightning.mesh.mesh import Mesh
    from cg_lightning.render.mesh import build_mesh_rasterizer

    if ctx.state.is_done("stage2") and ctx.layout.model_glb.is_file():
        log.info("stage2: already finished, reusing %s", ctx.layout.model_glb)
        return
    coarse = ctx.find_output("coarse_glb")
    if coarse is None:
        raise CGError(f"stage2: no coarse mesh at {ctx.layout.coarse_glb}; run the mesh stage first")
    t0 = time.perf_counter()
    reference = ReferenceImage.from_rgba(ctx.reference_rgba, elevation=float(ctx.cfg.elevation))
    stage = with_runtime_objects(ctx.cfg.stage2, mesh=Mesh.load(coarse), reference=reference, prior=ctx.prior(),
                                 rasterizer=build_mesh_rasterizer(ctx.cfg.renderer.mesh))
    trainer = build_trainer(ctx.cfg, stage="stage2", max_steps=stage.steps, output_dir=ctx.output_dir,
                            device=ctx.device, loggers=ctx.loggers.for_stage("stage2"),
                            extra_callbacks=ctx.loggers.callbacks())
    fit_resumable(trainer, stage, output_dir=ctx.output_dir, stage="stage2", resume=ctx.cfg.resume)
    mesh = stage.export_mesh()
    write_obj(mesh, ctx.layout.model_obj)
    write_glb(mesh, ctx.layout.model_glb)
    seconds = time.perf_counter() - t0
    ctx.record({"time/stage2_s": seconds})
    ctx.state.mark_done("stage2", seconds)
    log.info("stage2: done in %.1f s -> %s", seconds, ctx.layout.model_glb)
