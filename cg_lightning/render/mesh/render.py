"""Render a textured :class:`Mesh` from a :class:`Camera` through any :class:`MeshRasterizer`.

Mirrors DreamGaussian's ``mesh_renderer.Renderer.render``: clip positions from ``camera.mvp_gl``, UVs interpolated
with their exact pixel derivatives and the texture sampled ``linear-mipmap-linear`` (the stage-2 setting),
silhouettes antialiased, composited over the background, optionally rasterised at another scale and resized back.
``albedo`` overrides the mesh's texture (stage 2 passes its parameter). A mesh without texture renders as 0.5 grey
(DreamGaussian's default for an untextured mesh).

Three switches choose between DreamGaussian's exact steps and smoother variants (the defaults are the smooth ones,
which evaluation, the oracle prior and the bundled references use; stage 2 passes its config, DreamGaussian's steps
in the paper experiments):

- ``texture_activation``: ``"sigmoid"`` samples the given texture as logits and applies the sigmoid to the filtered
  value (DG: ``sigmoid(dr.texture(raw_albedo, ...))``); ``"none"`` samples the given colours.
- ``silhouette``: ``"binary"`` (DG) antialiases the colour image, whose off-mesh pixels hold the texture sampled at
  ``uv = (0, 0)`` (what nvdiffrast returns there), then composites with the binary coverage ``alpha``;
  ``"antialiased"`` antialiases colour and coverage together (off-mesh colour 0) and composites with that
  fractional alpha, so edge pixels blend with the background.
- ``resize`` (only when ``ssaa != 1``): ``"bilinear"`` (DG's ``scale_img_hwc``) enlarges with ``align_corners=True``
  and shrinks with plain bilinear (``align_corners=False``, no antialiasing); ``"antialiased"`` uses
  ``align_corners=False`` both ways and an antialiasing filter when shrinking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cg_lightning.cameras import Camera
from cg_lightning.errors import CGError, ConfigError
from cg_lightning.mesh.mesh import Mesh, normalize_or_default
from cg_lightning.render.mesh.base import MeshRasterizer, check_filter_args

UNTEXTURED_GREY = 0.5
TEXTURE_ACTIVATIONS = ("none", "sigmoid")
SILHOUETTES = ("antialiased", "binary")
RESIZES = ("antialiased", "bilinear")


@dataclass
class MeshRenderOutput:
    """One view. image (3,H,W) over bg; alpha (1,H,W) coverage (antialiased or binary, see ``silhouette``, then
    resized); depth (1,H,W) camera-space distance
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


def check_render_options(texture_activation: str, silhouette: str, resize: str) -> None:
    for name, value, allowed in (("texture_activation", texture_activation, TEXTURE_ACTIVATIONS),
                                 ("silhouette", silhouette, SILHOUETTES), ("resize", resize, RESIZES)):
        if value not in allowed:
            raise ConfigError(f"render_mesh {name}={value!r}; expected one of {allowed}")


def ssaa_size(size: int, ssaa: float) -> int:
    """DreamGaussian's ``make_divisible(size * ssaa, 8)`` (``size`` itself when ``ssaa == 1``)."""
    return size if ssaa == 1.0 else max(8, int(math.ceil(size * ssaa / 8)) * 8)


def resize_back(maps: Tensor, size: tuple[int, int], resize: str) -> Tensor:
    """(1,C,h,w) -> (1,C,H,W). ``bilinear``: DG's ``scale_img_nhwc`` (shrink when both sides are larger, plain
    bilinear; otherwise enlarge with ``align_corners=True``). ``antialiased``: ``align_corners=False``, antialiased
    when shrinking."""
    h, w = size
    if tuple(maps.shape[-2:]) == (h, w):
        return maps
    if resize == "bilinear":
        if maps.shape[-2] > h and maps.shape[-1] > w:
            return F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False)
        return F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=True)
    shrink = maps.shape[-2] > h or maps.shape[-1] > w
    return F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)


def render_mesh(mesh: Mesh, camera: Camera, rasterizer: MeshRasterizer, bg_color: Tensor | float | Sequence[float],
                albedo: Tensor | None = None, *, filter_mode: str = "linear-mipmap-linear", antialias: bool = True,
                ssaa: float = 1.0, texture_activation: str = "none", silhouette: str = "antialiased",
                resize: str = "antialiased") -> MeshRenderOutput:
    """Render ``mesh`` at ``camera``'s resolution (the switches are described in the module docstring).

    ``ssaa`` rasterises at ``ceil8(H*ssaa) x ceil8(W*ssaa)`` and resizes back (DreamGaussian's random render scale
    in stage 2); 1 renders directly. ``antialias=False`` skips the silhouette antialiasing altogether.
    """
    check_filter_args(filter_mode, "wrap")
    check_render_options(texture_activation, silhouette, resize)
    device, dtype = mesh.v.device, mesh.v.dtype
    h, w = int(camera.height), int(camera.width)
    rh, rw = ssaa_size(h, ssaa), ssaa_size(w, ssaa)
    cam = camera.to(device)
    v_h = F.pad(mesh.v, (0, 1), value=1.0)
    pos = (v_h @ cam.mvp_gl.to(dtype).T).unsqueeze(0)  # (1,V,4)
    tri = mesh.f.to(torch.int32)
    tex = albedo if albedo is not None else mesh.albedo
    if tex is not None and mesh.vt is None:
        raise CGError("render_mesh: the mesh has a texture but no UVs (vt); unwrap it first")
    mipmapped = tex is not None and filter_mode == "linear-mipmap-linear"
    if mipmapped:
        rast, rast_db = rasterizer.rasterize(pos, tri, (rh, rw), with_db=True)
    else:
        rast, rast_db = rasterizer.rasterize(pos, tri, (rh, rw)), None
    covered = rast[..., 3:] > 0
    cov = covered.to(dtype)

    # one interpolation pass for everything per-vertex: uv (2) | world normal (3) | camera depth (1)
    vn = mesh.vn if mesh.vn is not None else mesh.auto_normals().vn
    v_cam = v_h @ cam.w2c_gl.to(dtype).T
    attrs = [vn.to(dtype), -v_cam[:, 2:3]]
    if tex is not None:
        attrs.insert(0, mesh.vt.to(dtype))
    inter = rasterizer.interpolate(torch.cat(attrs, -1), rast, tri, rast_db=rast_db) if mipmapped else \
        rasterizer.interpolate(torch.cat(attrs, -1), rast, tri)
    inter, inter_da = inter if mipmapped else (inter, None)
    off = 2 if tex is not None else 0
    normal, depth = inter[..., off:off + 3], inter[..., off + 3:off + 4]

    binary = silhouette == "binary" and antialias
    if tex is not None:
        tex_b = tex.to(dtype).unsqueeze(0)
        # sample only the covered pixels, passed as an (1,N,1,2) "image" (any shape is valid for texture())
        uv = inter[..., 0:2]
        pix = covered.reshape(-1).nonzero().squeeze(1)
        uv_da = inter_da[..., 0:4].reshape(-1, 4)[pix].view(1, -1, 1, 4) if mipmapped else None
        texels = rasterizer.texture(tex_b, uv.reshape(-1, 2)[pix].view(1, -1, 1, 2), filter_mode=filter_mode,
                                    uv_da=uv_da)
        if texture_activation == "sigmoid":
            texels = torch.sigmoid(texels)
        nc = texels.shape[-1]
        if binary:  # off-mesh pixels: nvdiffrast samples uv = (0, 0) with zero derivatives (finest level)
            zero = tex_b.new_zeros(1, 1, 1, 2)
            outside = rasterizer.texture(tex_b, zero, filter_mode=filter_mode,
                                         uv_da=tex_b.new_zeros(1, 1, 1, 4) if mipmapped else None).reshape(1, nc)
            if texture_activation == "sigmoid":
                outside = torch.sigmoid(outside)
            color = outside.expand(rh * rw, nc).index_put((pix,), texels.reshape(-1, nc))
        else:
            color = texels.new_zeros(rh * rw, nc).index_put((pix,), texels.reshape(-1, nc))
        color = color.view(1, rh, rw, -1)
    else:
        color = torch.full((1, rh, rw, 3), UNTEXTURED_GREY, dtype=dtype, device=device)
    bg = _bg_tensor(bg_color, device, dtype)
    if binary:  # DG: antialias the colour, then the binary coverage composites it over the background
        color = rasterizer.antialias(color, rast, pos, tri)
        alpha = cov
        image = alpha * color + (1.0 - alpha) * bg
    else:
        color = color * cov
        if antialias:
            both = rasterizer.antialias(torch.cat([color, cov], -1), rast, pos, tri)
            color, alpha = both[..., :3], both[..., 3:]
        else:
            alpha = cov
        alpha = alpha.clamp(0.0, 1.0)
        image = color.clamp(0.0, 1.0) + (1.0 - alpha) * bg

    normal = normalize_or_default(normal.reshape(-1, 3)).reshape(normal.shape) * cov
    back = cam.c2w[:3, 2].to(dtype)  # unit vector from the scene towards the camera
    viewcos = (normal * back).sum(-1, keepdim=True) * cov

    maps = torch.cat([image, alpha, depth, normal, viewcos], -1)[0].permute(2, 0, 1)  # (C,rh,rw)
    maps = resize_back(maps[None], (h, w), resize)[0]
    return MeshRenderOutput(image=maps[0:3].clamp(0.0, 1.0), alpha=maps[3:4], depth=maps[4:5], normal=maps[5:8], viewcos=maps[8:9])
