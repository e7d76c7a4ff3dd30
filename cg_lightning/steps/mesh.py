"""Mesh step: Gaussians -> density grid -> marching cubes -> cleanup -> UVs -> colours baked from 26 views."""

from __future__ import annotations

import logging
import time

import torch

from cg_lightning.errors import CGError
from cg_lightning.runtime.context import JobContext

log = logging.getLogger(__name__)


def load_gaussians(ctx: JobContext):
    from cg_lightning.gaussians.ply import load_ply

    ply = ctx.find_output("gaussians_ply")
    if ply is None:
        raise CGError(f"mesh: no stage-1 Gaussians at {ctx.layout.gaussians_ply}"
                      + (f" or in from_run={ctx.cfg.from_run}" if ctx.cfg.get("from_run") else "")
                      + "; run stage1 first (stages=[stage1,...]) or point from_run= at a finished job")
    return load_ply(ply).to(ctx.device)


def extract_textured_mesh(ctx: JobContext):
    """The coarse textured mesh of the stage-1 Gaussians, as configured in ``cfg.mesh``."""
    from cg_lightning.mesh.bake import bake_texture
    from cg_lightning.mesh.cleanup import clean_mesh
    from cg_lightning.mesh.extract import extract_mesh
    from cg_lightning.mesh.mesh import Mesh
    from cg_lightning.mesh.uv import unwrap_uv
    from cg_lightning.render.gaussian import build_gaussian_rasterizer
    from cg_lightning.render.mesh import build_mesh_rasterizer

    m = ctx.cfg.mesh
    gaussians = load_gaussians(ctx)
    raw = extract_mesh(gaussians, resolution=m.resolution, num_blocks=m.num_blocks,
                       opacity_threshold=m.opacity_threshold, iso=m.iso, cov_floor_voxels=m.cov_floor_voxels,
                       pad_grid=m.pad_grid, cull_sigma=m.cull_sigma,
                       fill_cavities=m.fill_cavities)
    v, f = clean_mesh(raw.v.cpu().numpy(), raw.f.cpu().numpy(), remesh=m.remesh, remesh_size=m.remesh_size,
                      max_faces=m.max_faces)
    mesh = unwrap_uv(Mesh(v=torch.as_tensor(v, dtype=torch.float32), f=torch.as_tensor(f, dtype=torch.long)),
                     texture_size=m.texture_size, padding=m.uv_padding, seam_normals=m.seam_normals)
    gaussian_rasterizer = build_gaussian_rasterizer(ctx.cfg.renderer.gaussian, ctx.cfg.get("experiment_name"))
    white = torch.ones(3, device=ctx.device)

    @torch.no_grad()
    def render_rgb(camera):
        return gaussian_rasterizer.render(gaussians, camera.to(ctx.device), white).image

    return bake_texture(mesh.to(ctx.device), render_rgb, build_mesh_rasterizer(ctx.cfg.renderer.mesh),
                        texture_size=m.texture_size, render_size=m.bake_render_size,
                        view_cos_threshold=m.view_cos_threshold, inpaint_dilation=m.inpaint_dilation,
                        blend=m.bake_blend, min_resolution=m.bake_min_resolution,
                        texel_mapping=m.bake_texel_mapping, inpaint=m.inpaint)


def run_mesh(ctx: JobContext) -> None:
    from cg_lightning.mesh.export import write_glb, write_obj

    if ctx.state.is_done("mesh") and ctx.layout.coarse_glb.is_file():
        log.info("mesh: already extracted, reusing %s", ctx.layout.coarse_glb)
        return
    t0 = time.perf_counter()
    mesh = extract_textured_mesh(ctx)
    write_obj(mesh, ctx.layout.coarse_obj)
    write_glb(mesh, ctx.layout.coarse_glb)
    if ctx.loggers.run is not None:  # the mesh of stage 1's final Gaussians: at stage 1's last step
        from cg_lightning.runtime.wandb_media import mesh_object

        ctx.loggers.log_media({"mesh/coarse": mesh_object(ctx.layout.coarse_glb)}, stage="stage1",
                              step=int(ctx.cfg.stage1.steps))
    seconds = time.perf_counter() - t0
    ctx.record({"time/mesh_s": seconds, "mesh/num_vertices": float(mesh.v.shape[0]),
                "mesh/num_faces": float(mesh.f.shape[0])})
    ctx.state.mark_done("mesh", seconds)
    log.info("mesh: %d vertices, %d faces in %.1f s -> %s", mesh.v.shape[0], mesh.f.shape[0], seconds,
             ctx.layout.coarse_glb)
