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


def gaussian_view_fn(ctx: JobContext, gaussians, rasterizer):
    """camera -> (image, alpha) of the stage-1 Gaussians on white, on the job's device (export and evaluation)."""
    white = torch.ones(3, device=ctx.device)

    def render(cam):
        with torch.no_grad():
            out = rasterizer.render(gaussians, cam.to(ctx.device), white)
        return out.image, out.alpha

    return render


def mesh_view_fn(ctx: JobContext, mesh, rasterizer):
    """camera -> (image, alpha) of a textured mesh on white, on the job's device (export and evaluation)."""
    from cg_lightning.render.mesh import render_mesh

    white = torch.ones(3, device=ctx.device)
    mesh = mesh.to(ctx.device)

    def render(cam):
        with torch.no_grad():
            out = render_mesh(mesh, cam.to(ctx.device), rasterizer, white)
        return out.image, out.alpha

    return render


def gaussian_turntable_frames(ctx: JobContext, gaussians, cameras):
    from cg_lightning.evaluation.truth import renderer_tag
    from cg_lightning.render.gaussian import build_gaussian_rasterizer
    from cg_lightning.steps.evaluate import truth_view_keys

    rasterizer = build_gaussian_rasterizer(ctx.cfg.renderer.gaussian, ctx.cfg.get("experiment_name"))
    # the frames that are also ground-truth evaluation views are kept for the evaluate step
    render = ctx.renders.wrap("stage1", renderer_tag(rasterizer, ctx.device), gaussian_view_fn(ctx, gaussians, rasterizer),
                              keep=truth_view_keys(ctx))
    for cam in cameras:
        yield _to_uint8(render(cam)[0])


def mesh_turntable_frames(ctx: JobContext, mesh, cameras, name: str = "final"):
    from cg_lightning.evaluation.truth import renderer_tag
    from cg_lightning.render.mesh import build_mesh_rasterizer
    from cg_lightning.steps.evaluate import truth_view_keys

    rasterizer = build_mesh_rasterizer(ctx.cfg.renderer.mesh)
    render = ctx.renders.wrap(name, renderer_tag(rasterizer, ctx.device), mesh_view_fn(ctx, mesh, rasterizer),
                              keep=truth_view_keys(ctx))
    for cam in cameras:
        yield _to_uint8(render(cam)[0])


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
    if len(ctx.renders):
        log.info("export: %d turntable frames kept for the ground-truth evaluation views", len(ctx.renders))


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
