"""The triangle mesh container shared by extraction, baking, stage 2, export and the oracle prior.

Why one index buffer: ``vt`` (and ``vn``) are aligned with ``v`` (UV seams are split into duplicate vertices, as
DreamGaussian does after xatlas), so a single ``f`` serves positions, UVs and normals. That is what glTF and the
rasterizer's ``interpolate`` need, and it keeps every consumer free of per-corner index bookkeeping.

UV convention: ``u`` -> texture column, ``v`` -> texture row with ``v = 0`` the *first* row of ``albedo``
(glTF's convention; OBJ files store ``1 - v``, handled by the exporter and :meth:`Mesh.load`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cg_lightning.errors import CGError, InputImageError

# Faces whose doubled area is below this contribute no normal; a vertex with no contribution gets +z.
_DEGENERATE_EPS = 1e-20


@dataclass
class Mesh:
    """Triangle mesh with optional per-vertex normals/UVs and an albedo texture.

    v: (V,3) float positions; f: (F,3) long vertex indices; vn: (V,3) unit normals or None;
    vt: (V,2) UVs aligned with ``v`` or None; albedo: (Ht,Wt,3) float texture in [0,1] or None.
    """

    v: Tensor
    f: Tensor
    vn: Tensor | None = None
    vt: Tensor | None = None
    albedo: Tensor | None = None

    def __post_init__(self) -> None:
        if self.v.ndim != 2 or self.v.shape[1] != 3:
            raise ValueError(f"Mesh.v must be (V,3), got {tuple(self.v.shape)}")
        if self.f.ndim != 2 or self.f.shape[1] != 3:
            raise ValueError(f"Mesh.f must be (F,3), got {tuple(self.f.shape)}")
        if not self.v.is_floating_point():
            self.v = self.v.float()
        if self.f.dtype != torch.long:
            self.f = self.f.long()
        n = self.v.shape[0]
        if self.f.numel() and (int(self.f.min()) < 0 or int(self.f.max()) >= n):
            raise ValueError(f"Mesh.f indexes vertices outside [0, {n})")
        for name, width in (("vn", 3), ("vt", 2)):
            t = getattr(self, name)
            if t is not None and (t.ndim != 2 or t.shape != (n, width)):
                raise ValueError(f"Mesh.{name} must be ({n},{width}) (aligned with v), got {tuple(t.shape)}")
        if self.albedo is not None and (self.albedo.ndim != 3 or self.albedo.shape[-1] != 3):
            raise ValueError(f"Mesh.albedo must be (Ht,Wt,3), got {tuple(self.albedo.shape)}")

    # ------------------------------------------------------------------ basic properties
    @property
    def num_vertices(self) -> int:
        return int(self.v.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.f.shape[0])

    @property
    def device(self) -> torch.device:
        return self.v.device

    def to(self, device: torch.device | str) -> Mesh:
        """Copy of the mesh with every tensor on ``device``."""

        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return Mesh(mv(self.v), mv(self.f), mv(self.vn), mv(self.vt), mv(self.albedo))

    def bounds(self) -> tuple[Tensor, Tensor]:
        """Axis-aligned bounding box ``(min (3,), max (3,))`` of the vertices."""
        if self.num_vertices == 0:
            raise CGError("bounds() of an empty mesh")
        return self.v.min(dim=0).values, self.v.max(dim=0).values

    def face_normals(self) -> Tensor:
        """Unnormalised face normals (F,3) = cross(v1 - v0, v2 - v0); the length is twice the face area."""
        v0, v1, v2 = (self.v[self.f[:, i]] for i in range(3))
        return torch.cross(v1 - v0, v2 - v0, dim=-1)

    def auto_normals(self) -> Mesh:
        """Copy with area-weighted vertex normals (DreamGaussian's ``auto_normal``).

        Each face adds its unnormalised normal (length = 2 x area) to its three vertices, so large faces dominate;
        vertices without any non-degenerate face get (0, 0, 1) instead of NaN.
        """
        fn = self.face_normals()
        vn = torch.zeros_like(self.v)
        for i in range(3):
            vn.index_add_(0, self.f[:, i], fn)
        return replace(self, vn=normalize_or_default(vn))

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> Mesh:
        """Load an .obj/.glb/.gltf/.ply (anything trimesh reads) with its UVs and base-colour texture if present.

        Scenes are flattened (node transforms applied). Normals are recomputed (area-weighted) so they always match
        the geometry; UVs are converted to our top-row-first convention.
        """
        import trimesh

        p = Path(path)
        if not p.is_file():
            raise InputImageError(f"Mesh file not found: {p}")
        try:
            loaded = trimesh.load(str(p), process=False, maintain_order=True)
        except Exception as exc:  # trimesh raises many types for corrupt files
            raise InputImageError(f"Cannot read mesh {p}: {exc}") from exc
        tm = as_single_trimesh(loaded, p)
        v = torch.as_tensor(np.asarray(tm.vertices, dtype=np.float32))
        f = torch.as_tensor(np.asarray(tm.faces, dtype=np.int64))
        vt, albedo = _texture_of(tm)
        mesh = cls(v=v, f=f, vt=vt, albedo=albedo).auto_normals()
        return mesh.to(device)


def normalize_or_default(n: Tensor, default: tuple[float, float, float] = (0.0, 0.0, 1.0)) -> Tensor:
    """Normalise rows of ``n`` (N,3); rows of (near) zero length become ``default``."""
    length = n.norm(dim=-1, keepdim=True)
    ok = length > _DEGENERATE_EPS**0.5
    fallback = torch.tensor(default, dtype=n.dtype, device=n.device).expand_as(n)
    return torch.where(ok, n / length.clamp_min(_DEGENERATE_EPS), fallback)


def as_single_trimesh(loaded, path: Path):
    import trimesh

    if isinstance(loaded, trimesh.Scene):
        geoms = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh)] if loaded.geometry else []
        if not geoms:
            raise InputImageError(f"{path} contains no triangle mesh")
        loaded = geoms[0] if len(geoms) == 1 else trimesh.util.concatenate(geoms)
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise InputImageError(f"{path} contains no triangle mesh (got {type(loaded).__name__})")
    return loaded


def _texture_of(tm) -> tuple[Tensor | None, Tensor | None]:
    """(vt in our convention, albedo (Ht,Wt,3) float) from a trimesh's TextureVisuals, or (None, None)."""
    visual = getattr(tm, "visual", None)
    uv = getattr(visual, "uv", None)
    if uv is None or len(uv) != len(tm.vertices):
        return None, None
    uv = np.asarray(uv, dtype=np.float32)
    vt = torch.as_tensor(np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1))  # trimesh keeps OBJ's bottom-left origin
    material = getattr(visual, "material", None)
    image = None
    factor = np.ones(3, dtype=np.float32)
    if material is not None:
        image = getattr(material, "baseColorTexture", None)
        if image is None:
            image = getattr(material, "image", None)
        bcf = getattr(material, "baseColorFactor", None)
        if bcf is not None:
            factor = np.asarray(bcf, dtype=np.float32)[:3] / (255.0 if np.asarray(bcf).dtype == np.uint8 else 1.0)
    if image is None:
        return vt, None
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return vt, torch.as_tensor(arr * factor[None, None, :])
