"""Export step: turntable videos of the Gaussians and of the final mesh; videos and the mesh mirrored to W&B.

(The Gaussians' point cloud is logged by stage 1 itself when it finishes.)
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from cg_lightning.runtime.context import JobContext

log = logging.getLogger(__name__)


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def gaussian_turntable_frames(ctx: JobContext, gaussians, cameras):
    from cg_lightning.render.gaussian import build_gaussian_rasterizer

    rasterizer = build_gaussian_rasterizer(ctx.cfg.renderer.gaussian, ctx.cfg.get("experiment_name"))
    white = torch.ones(3, device=ctx.device)
    with torch.no_grad():
        for cam in cameras:
            yield _to_uint8(rasterizer.render(gaussians, cam.to(ctx.device), white).image)


def mesh_turntable_frames(ctx: JobContext, mesh, cameras):
    from cg_lightning.render.mesh import build_mesh_rasterizer, render_mesh

    rasterizer = build_mesh_rasterizer(ctx.cfg.renderer.mesh)
    white = torch.ones(3, device=ctx.device)
    mesh = mesh.to(ctx.device)
    with torch.no_grad():
        for cam in cameras:
            yield _to_uint8(render_mesh(mesh, cam.to(ctx.device), rasterizer, white).image)


def run_export(ctx: JobContext) -> None:
    from cg_lightning.io.video import turntable_cameras, write_mp4
    from cg_lightning.mesh.mesh import Mesh
    from cg_lightning.steps.mesh import load_gaussians

    e = ctx.cfg.evaluation.turntable
    cameras = turntable_cameras(e.frames, elevation_deg=e.elevation, radius=e.radius, fovy_deg=e.fovy, size=e.size)
    written = []
    if ctx.find_output("gaussians_ply") is not None:
        gaussians = load_gaussians(ctx)
        write_mp4(gaussian_turntable_frames(ctx, gaussians, cameras), ctx.layout.stage1_turntable, fps=e.fps)
        written.append(("stage1", ctx.layout.stage1_turntable))
    glb = ctx.find_output("model_glb")
    if glb is not None:
        write_mp4(mesh_turntable_frames(ctx, Mesh.load(glb), cameras), ctx.layout.stage2_turntable, fps=e.fps)
        written.append(("stage2", ctx.layout.stage2_turntable))
    _log_media(ctx, written, glb)
    ctx.state.mark_done("export")
    for stage, path in written:
        log.info("export: %s turntable -> %s", stage, path)


def _log_media(ctx: JobContext, videos, glb) -> None:
    """Each turntable (and the final mesh) at the last step of the stage that made what it shows."""
    if ctx.loggers.run is None:
        return
    from cg_lightning.runtime.wandb_media import mesh_object, video

    for stage, path in videos:
        payload = {f"{stage}/turntable": video(path)}
        if stage == "stage2" and glb is not None:
            payload["stage2/mesh"] = mesh_object(glb)
        ctx.loggers.log_media(payload, stage=stage, step=int(ctx.cfg[stage].steps))
