"""Gaussians -> mesh -> UV -> texture baked from Gaussian renders: the textured mesh looks like the Gaussians."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from cg_lightning.cameras import orbit
from cg_lightning.mesh.bake import bake_texture
from cg_lightning.mesh.cleanup import clean_mesh
from cg_lightning.mesh.extract import extract_mesh
from cg_lightning.mesh.mesh import Mesh
from cg_lightning.mesh.uv import unwrap_uv
from cg_lightning.render.gaussian import build_gaussian_rasterizer
from cg_lightning.render.mesh import TorchMeshRasterizer, render_mesh

BENCH_DIR = str(Path(__file__).resolve().parents[1] / "experiments" / "benchmarks")


@pytest.mark.slow
def test_textured_mesh_matches_gaussian_renders(monkeypatch):
    monkeypatch.syspath_prepend(BENCH_DIR)
    from bench_mesh_extract import synthetic_object  # the benchmark's trained-looking Gaussian object

    torch.manual_seed(0)
    model = synthetic_object(3000)
    raw = extract_mesh(model, resolution=64, num_blocks=8, iso=1.0)
    v, f = clean_mesh(raw.v, raw.f, remesh=True, remesh_size=0.04, max_faces=5000)
    mesh = unwrap_uv(Mesh(v=torch.from_numpy(v), f=torch.from_numpy(f)), texture_size=256)
    gauss = build_gaussian_rasterizer("torch")
    white = torch.ones(3)

    @torch.no_grad()
    def render_rgb(cam):
        return gauss.render(model, cam, white).image

    baked = bake_texture(mesh, render_rgb, TorchMeshRasterizer(), texture_size=256, render_size=128, min_resolution=64)
    ras = TorchMeshRasterizer()
    for elev, azim in [(0.0, 20.0), (-30.0, -110.0)]:
        cam = orbit(elev, azim, width=128, height=128)
        out = render_mesh(baked, cam, ras, 1.0, filter_mode="linear", antialias=False)
        ref = render_rgb(cam)
        mask = out.alpha[0] > 0
        # interior of the silhouette (Gaussian edges are soft): erode the mask by 2 px
        inner = -torch.nn.functional.max_pool2d(-mask[None, None].float(), 5, 1, 2)[0, 0] > 0.5
        mse = ((out.image - ref)[:, inner] ** 2).mean()
        psnr = float(-10 * torch.log10(mse))
        assert psnr > 30.0, psnr  # measured ~37-39 dB
        # and the silhouettes agree (the mesh is the Gaussians' surface, not a blob of another size)
        g_alpha = gauss.render(model, cam, white).alpha[0] > 0.5
        iou = float((g_alpha & mask).sum() / (g_alpha | mask).sum())
        assert iou > 0.85, iou  # measured ~0.90-0.92
    assert not math.isnan(float(baked.albedo.mean()))
