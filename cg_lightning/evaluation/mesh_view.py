"""Meshes as the metrics see them: textured (our pipeline) or vertex-coloured (Shap-E, One-2-3-45, ...).

Why a separate module: meshes produced elsewhere come in other frames (z-up, other front axis, arbitrary scale) and
often carry colours per vertex rather than a texture. Scoring them with the same protocol needs (1) a loader that
keeps vertex colours, (2) a renderer for them, (3) an explicit alignment into our frame: an axis change given by
the user, centring + scaling to a unit box, then a silhouette fit at the reference view so the render covers the
same pixels as the input (the input is recentred to a fixed border by preprocessing; our own meshes are fitted to
it during training, external ones are not).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cg_lightning.cameras import Camera, orbit
from cg_lightning.errors import CGError, ConfigError, InputImageError
from cg_lightning.mesh.mesh import Mesh, as_single_trimesh

_AXES = {"+x": (1, 0, 0), "-x": (-1, 0, 0), "+y": (0, 1, 0), "-y": (0, -1, 0), "+z": (0, 0, 1), "-z": (0, 0, -1)}


@dataclass
class ScorableMesh:
    """A :class:`Mesh` plus optional per-vertex sRGB colours (V,3) in [0,1], used when the mesh has no texture."""

    mesh: Mesh
    vertex_colors: Tensor | None = None

    def __post_init__(self) -> None:
        vc = self.vertex_colors
        if vc is not None and (vc.ndim != 2 or vc.shape != (self.mesh.num_vertices, 3)):
            raise ValueError(f"vertex_colors must be ({self.mesh.num_vertices},3), got {tuple(vc.shape)}")

    @classmethod
    def of(cls, m: Mesh | ScorableMesh) -> ScorableMesh:
        return m if isinstance(m, ScorableMesh) else cls(m)

    @property
    def textured(self) -> bool:
        return self.mesh.albedo is not None

    @property
    def has_color(self) -> bool:
        return self.textured or self.vertex_colors is not None

    def to(self, device: torch.device | str) -> ScorableMesh:
        vc = None if self.vertex_colors is None else self.vertex_colors.to(device)
        return ScorableMesh(self.mesh.to(device), vc)

    # ------------------------------------------------------------------ geometry edits
    def transformed(self, linear: Tensor | None = None, scale: float = 1.0,
                    translation: Tensor | None = None) -> ScorableMesh:
        """``v' = scale * linear @ v + translation`` (normals recomputed)."""
        v = self.mesh.v
        if linear is not None:
            v = v @ linear.to(v).T
        v = v * float(scale)
        if translation is not None:
            v = v + translation.to(v)
        return ScorableMesh(replace(self.mesh, v=v).auto_normals(), self.vertex_colors)

    def bbox_center_extent(self) -> tuple[Tensor, float]:
        lo, hi = self.mesh.bounds()
        return (lo + hi) / 2.0, float((hi - lo).max()) / 2.0

    # ------------------------------------------------------------------ rendering
    def render(self, camera: Camera, rasterizer, bg_color: float = 1.0) -> tuple[Tensor, Tensor]:
        """(image (3,H,W) over ``bg_color``, alpha (1,H,W)) from ``camera``."""
        if self.vertex_colors is None or self.textured:
            from cg_lightning.render.mesh import render_mesh

            out = render_mesh(self.mesh, camera, rasterizer, bg_color)
            return out.image, out.alpha
        return _render_vertex_colors(self.mesh, self.vertex_colors, camera, rasterizer, bg_color)

    def render_fn(self, rasterizer, bg_color: float = 1.0) -> Callable[[Camera], Tensor]:
        """``camera -> image (3,H,W)`` for :mod:`cg_lightning.evaluation.metrics`."""
        return lambda camera: self.render(camera, rasterizer, bg_color)[0]


def _render_vertex_colors(mesh: Mesh, colors: Tensor, camera: Camera, rasterizer,
                          bg_color: float) -> tuple[Tensor, Tensor]:
    """Gouraud-interpolated vertex colours with antialiased silhouettes (the same steps as ``render_mesh``)."""
    dtype, device = mesh.v.dtype, mesh.v.device
    cam = camera.to(device)
    pos = (F.pad(mesh.v, (0, 1), value=1.0) @ cam.mvp_gl.to(dtype).T).unsqueeze(0)
    tri = mesh.f.to(torch.int32)
    rast = rasterizer.rasterize(pos, tri, (int(camera.height), int(camera.width)))
    cov = (rast[..., 3:] > 0).to(dtype)
    color = rasterizer.interpolate(colors.to(dtype), rast, tri) * cov
    both = rasterizer.antialias(torch.cat([color, cov], -1), rast, pos, tri)
    color, alpha = both[..., :3].clamp(0.0, 1.0), both[..., 3:].clamp(0.0, 1.0)
    image = color + (1.0 - alpha) * float(bg_color)
    return image[0].permute(2, 0, 1).clamp(0.0, 1.0), alpha[0].permute(2, 0, 1)


# ---------------------------------------------------------------------------------------------- loading
def _vertex_colors_of(tm) -> Tensor | None:
    """(V,3) float colours from a trimesh's ColorVisuals (vertex or face colours), or None when it has none."""
    visual = tm.visual
    if getattr(visual, "kind", None) == "texture":
        try:  # a material colour without an image: trimesh turns it into per-vertex colours
            visual = visual.to_color()
        except Exception:  # noqa: BLE001 - trimesh raises various errors for odd materials
            return None
    if getattr(visual, "kind", None) not in ("vertex", "face"):
        return None
    vc = np.asarray(visual.vertex_colors)
    if vc.ndim != 2 or vc.shape[0] != len(tm.vertices) or vc.shape[1] < 3:
        return None
    scale = 255.0 if vc.dtype == np.uint8 or vc.max() > 1.0 else 1.0
    return torch.as_tensor(vc[:, :3].astype(np.float32) / scale)


def load_scorable_mesh(path: str | os.PathLike) -> ScorableMesh:
    """Load .obj/.glb/.gltf/.ply with its texture, or else its vertex/face colours.

    Raises :class:`InputImageError` for a missing/unreadable file or a mesh with no colour at all (an untextured
    mesh would be scored as grey, which says nothing about the method).
    """
    import trimesh

    p = Path(path)
    mesh = Mesh.load(p)
    if mesh.albedo is not None:
        return ScorableMesh(mesh)
    tm = as_single_trimesh(trimesh.load(str(p), process=False, maintain_order=True), p)
    colors = _vertex_colors_of(tm)
    if colors is None:
        raise InputImageError(f"{p} has neither a texture image nor vertex colours, so it cannot be scored "
                              "against an image. Export it with its texture (.obj + .mtl + image, or .glb) or with "
                              "vertex colours (.ply).")
    v = torch.as_tensor(np.asarray(tm.vertices, dtype=np.float32))
    f = torch.as_tensor(np.asarray(tm.faces, dtype=np.int64))
    return ScorableMesh(Mesh(v=v, f=f).auto_normals(), colors)


# ---------------------------------------------------------------------------------------------- alignment
def axis_rotation(front: str = "+z", up: str = "+y") -> Tensor:
    """Rotation (3,3) taking the mesh's ``front`` axis to +z and ``up`` axis to +y (our frame)."""
    if front not in _AXES or up not in _AXES:
        raise ConfigError(f"front/up must be one of {sorted(_AXES)}, got front={front!r}, up={up!r}")
    f = torch.tensor(_AXES[front], dtype=torch.float32)
    u = torch.tensor(_AXES[up], dtype=torch.float32)
    if abs(float(f @ u)) > 0.5:
        raise ConfigError(f"front={front} and up={up} must be perpendicular axes")
    r = torch.linalg.cross(u, f)  # right-handed: x = y cross z
    return torch.stack([r, u, f], dim=0)


def yaw_rotation(degrees: float) -> Tensor:
    """Rotation (3,3) about +y by ``degrees`` (positive turns +z towards +x)."""
    a = math.radians(float(degrees))
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=torch.float32)


def normalize_to_box(sm: ScorableMesh, half_extent: float = 0.5) -> ScorableMesh:
    """Centre the bounding box at the origin and scale its largest half side to ``half_extent``."""
    centre, ext = sm.bbox_center_extent()
    if ext <= 0.0:
        raise InputImageError("the mesh is degenerate (all vertices coincide)")
    centred = sm.transformed(translation=-centre)
    return centred.transformed(scale=half_extent / ext)


def _mask_box(alpha: Tensor) -> tuple[float, float, float] | None:
    """(centre x, centre y, extent) of ``alpha > 0.5`` in NDC (x right, y up), or None when empty."""
    mask = alpha.reshape(alpha.shape[-2], alpha.shape[-1]) > 0.5
    if not bool(mask.any()):
        return None
    h, w = mask.shape
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    x0, x1 = 2.0 * float(cols.min()) / w - 1.0, 2.0 * float(cols.max() + 1) / w - 1.0
    y_top, y_bot = 1.0 - 2.0 * float(rows.min()) / h, 1.0 - 2.0 * float(rows.max() + 1) / h
    return (x0 + x1) / 2.0, (y_top + y_bot) / 2.0, max(x1 - x0, y_top - y_bot)


def fit_to_reference(sm: ScorableMesh, reference_rgba: np.ndarray, rasterizer, *, elevation_deg: float,
                     radius: float = 2.0, fovy_deg: float = 49.1, size: int = 256,
                     iterations: int = 5) -> tuple[ScorableMesh, dict[str, float]]:
    """Scale and shift the mesh so its reference-view silhouette has the input's bounding box (centre + size).

    Each iteration renders the silhouette once; scaling is about the mesh's bbox centre, the shift moves it in the
    camera's image plane at the target's depth. Returns the fitted mesh and ``align/*`` diagnostics.
    """
    from cg_lightning.evaluation.metrics import reference_alpha

    target = _mask_box(reference_alpha(reference_rgba, size)[0])
    if target is None:
        raise InputImageError("the reference image's alpha mask is empty; cannot fit the mesh to it")
    camera = orbit(float(elevation_deg), 0.0, radius=float(radius), fovy_deg=float(fovy_deg), width=int(size),
                   height=int(size)).to(sm.mesh.device)
    right, up = camera.c2w[:3, 0], camera.c2w[:3, 1]
    total_scale, shift = 1.0, torch.zeros(3)
    for _ in range(int(iterations)):
        with torch.no_grad():
            _, alpha = sm.render(camera, rasterizer)
        box = _mask_box(alpha.cpu())
        if box is None:
            raise CGError("the mesh is not visible from the reference view after normalisation; check the "
                          "front/up axes given for it")
        s = target[2] / box[2]
        centre, _ = sm.bbox_center_extent()
        sm = sm.transformed(translation=-centre).transformed(scale=s, translation=centre)
        total_scale *= s
        dx, dy = target[0] - box[0], target[1] - box[1]
        delta = (right * dx * camera.tanfovx + up * dy * camera.tanfovy) * float(radius)
        sm = sm.transformed(translation=delta)
        shift += delta.cpu()
        if abs(s - 1.0) < 1e-3 and abs(dx) < 1e-3 and abs(dy) < 1e-3:
            break
    return sm, {"align/scale": total_scale, "align/shift": float(shift.norm())}
