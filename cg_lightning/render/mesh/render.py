"""Render a textured :class:`Mesh` from a :class:`Camera` through any :class:`MeshRasterizer`.

Mirrors DreamGaussian's mesh renderer: clip positions from ``camera.mvp_gl``, UVs interpolated and the albedo sampled
(``linear-mipmap-linear`` by default, the stage-2 setting), silhouettes antialiased, then composited over the
background. ``albedo`` overrides the mesh's texture so stage 2 can pass ``sigmoid(logits)`` with gradients.
A mesh without texture renders as 0.5 grey (DreamGaussian's default for an untextured mesh).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cg_lightning.cameras import Camera
from cg_lightning.errors import CGError
from cg_lightning.mesh.mesh import Mesh, normalize_or_default
from cg_lightning.render.mesh.base import MeshRasterizer, check_filter_args, estimate_uv_da

UNTEXTURED_GREY = 0.5


@dataclass
class MeshRenderOutput:
    """One view. image (3,H,W) over bg; alpha (1,H,W) antialiased coverage; depth (1,H,W) camera-space distance
    along the view axis (0 off-mesh); normal (3,H,W) unit world-space normal (0 off-mesh); viewcos (1,H,W) cosine
    between the normal and the direction to the camera (DreamGaussian: z of the normal in camera space)."""

    image: Tensor
    alpha: Tensor
    depth: Tensor
    normal: Tensor
    viewcos: Tensor


def _bg_tensor(bg_color: Tensor | float | Sequence[float], device: torch.device, dtype: torch.dtype) -> Tensor:
    bg = torch.as_tensor(bg_color, dtype=dtype, device=device).flatten()
    if bg.numel() == 1:
        bg = bg.expand(3)
    if bg.numel() != 3:
        raise CGError(f"bg_color must be a scalar or 3 values, got {bg.numel()}")
    return bg


def render_mesh(mesh: Mesh, camera: Camera, rasterizer: MeshRasterizer, bg_color: Tensor | float | Sequence[float],
                albedo: Tensor | None = None, *, filter_mode: str = "linear-mipmap-linear", antialias: bool = True,
                ssaa: float = 1.0) -> MeshRenderOutput:
    """Render ``mesh`` at ``camera``'s resolution.

    ``ssaa`` rasterises at ``ceil8(H*ssaa) x ceil8(W*ssaa)`` and resizes back bilinearly (DreamGaussian's random
    render scale in stage 2); 1 renders directly.
    """
    check_filter_args(filter_mode, "wrap")
    device, dtype = mesh.v.device, mesh.v.dtype
    h, w = int(camera.height), int(camera.width)
    if ssaa != 1.0:
        rh, rw = (max(8, int(math.ceil(s * ssaa / 8)) * 8) for s in (h, w))
    else:
        rh, rw = h, w
    cam = camera.to(device)
    v_h = F.pad(mesh.v, (0, 1), value=1.0)
    pos = (v_h @ cam.mvp_gl.to(dtype).T).unsqueeze(0)  # (1,V,4)
    tri = mesh.f.to(torch.int32)
    rast = rasterizer.rasterize(pos, tri, (rh, rw))
    covered = rast[..., 3:] > 0
    cov = covered.to(dtype)

    # one interpolation pass for everything per-vertex: uv (2) | world normal (3) | camera depth (1)
    tex = albedo if albedo is not None else mesh.albedo
    if tex is not None and mesh.vt is None:
        raise CGError("render_mesh: the mesh has a texture but no UVs (vt); unwrap it first")
    vn = mesh.vn if mesh.vn is not None else mesh.auto_normals().vn
    v_cam = v_h @ cam.w2c_gl.to(dtype).T
    attrs = [vn.to(dtype), -v_cam[:, 2:3]]
    if tex is not None:
        attrs.insert(0, mesh.vt.to(dtype))
    inter = rasterizer.interpolate(torch.cat(attrs, -1), rast, tri)
    off = 2 if tex is not None else 0
    normal, depth = inter[..., off:off + 3], inter[..., off + 3:off + 4]

    if tex is not None:
        # sample only the covered pixels, passed as an (1,N,1,2) "image" (any shape is valid for texture())
        uv = inter[..., 0:2]
        pix = covered.reshape(-1).nonzero().squeeze(1)
        uv_da = None
        if filter_mode == "linear-mipmap-linear":
            uv_da = estimate_uv_da(uv, covered[..., 0]).reshape(-1, 4)[pix].view(1, -1, 1, 4)
        texels = rasterizer.texture(tex.to(dtype).unsqueeze(0), uv.reshape(-1, 2)[pix].view(1, -1, 1, 2),
                                    filter_mode=filter_mode, uv_da=uv_da)
        color = texels.new_zeros(rh * rw, texels.shape[-1]).index_put((pix,), texels.reshape(-1, texels.shape[-1]))
        color = color.view(1, rh, rw, -1)
    else:
        color = torch.full((1, rh, rw, 3), UNTEXTURED_GREY, dtype=dtype, device=device)
    color = color * cov
    if antialias:
        both = rasterizer.antialias(torch.cat([color, cov], -1), rast, pos, tri)
        color, alpha = both[..., :3], both[..., 3:]
    else:
        alpha = cov
    alpha = alpha.clamp(0.0, 1.0)
    bg = _bg_tensor(bg_color, device, dtype)
    image = color.clamp(0.0, 1.0) + (1.0 - alpha) * bg

    normal = normalize_or_default(normal.reshape(-1, 3)).reshape(normal.shape) * cov
    back = cam.c2w[:3, 2].to(dtype)  # unit vector from the scene towards the camera
    viewcos = (normal * back).sum(-1, keepdim=True) * cov

    maps = torch.cat([image, alpha, depth, normal, viewcos], -1)[0].permute(2, 0, 1)  # (C,rh,rw)
    if (rh, rw) != (h, w):
        maps = F.interpolate(maps[None], size=(h, w), mode="bilinear", align_corners=False,
                             antialias=rh > h or rw > w)[0]
    return MeshRenderOutput(image=maps[0:3], alpha=maps[3:4], depth=maps[4:5], normal=maps[5:8], viewcos=maps[8:9])
