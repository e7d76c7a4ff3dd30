"""A prior that knows the answer: it renders the ground-truth textured mesh at the requested view.

Why: with ``prior=oracle`` the whole pipeline (stage 1, mesh, stage 2, evaluation) runs on CPU against a known
object, so regressions in anything *but* the diffusion prior show up as numbers (Chamfer distance, novel-view PSNR).

Views: a relative view ``(d_elev, d_azim, d_radius)`` is the absolute orbit camera
``orbit(ref_elevation + d_elev, d_azim, radius + d_radius)`` (the reference view has azimuth 0, as in DreamGaussian),
rendered at ``resolution`` with ``fovy_deg`` over ``background`` (white by default, like Zero123's inputs).

- ``sds``: ``loss = 0.5 * weight * sum((x - target)^2)`` where ``x`` are the images resized bilinearly to
  ``resolution`` (as Zero123's prior does) and ``target`` the true renders; its gradient ``weight * (x - target)``
  pulls every image towards the truth (summed over the batch like Zero123's SDS; ``step_ratio`` is unused).
- ``refine``: the true renders; with ``blend_strength=True`` it returns ``strength * x + (1 - strength) * target``,
  mirroring Zero123's refine where a larger ``strength`` keeps more of the input.
- ``novel_views``: the true renders.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from cg_lightning.cameras import orbit
from cg_lightning.errors import ConfigError, InputImageError
from cg_lightning.mesh.mesh import Mesh
from cg_lightning.priors.base import SDSOutput, check_relative_views
from cg_lightning.render.mesh.base import MeshRasterizer, build_mesh_rasterizer
from cg_lightning.render.mesh.render import render_mesh

MESH_NAMES = ("model.glb", "model.obj", "model.ply")


def find_ground_truth_mesh(image: str | os.PathLike) -> Path:
    """The ground-truth mesh stored next to an input image (``model.glb|obj|ply`` in the image's directory)."""
    folder = Path(image).parent
    for name in MESH_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise InputImageError(f"prior=oracle needs the ground-truth mesh next to the image: none of {list(MESH_NAMES)} "
                          f"in {folder}. Set prior.mesh_path=... explicitly.")


class OraclePrior:
    """Ground-truth renderer behind the :class:`~cg_lightning.priors.base.Prior` interface."""

    def __init__(self, mesh_path: str | None = None, image: str | None = None, resolution: int = 256,
                 radius: float = 2.0, fovy_deg: float = 49.1, background: Sequence[float] = (1.0, 1.0, 1.0),
                 weight: float = 1.0, blend_strength: bool = False, ssaa: float = 1.0,
                 rasterizer: str = "auto") -> None:
        if mesh_path is None and image is None:
            raise ConfigError("prior.mesh_path (or the run's image, whose folder holds model.glb) is required")
        if resolution < 8:
            raise ConfigError(f"prior.resolution={resolution} must be >= 8")
        if len(background) != 3:
            raise ConfigError(f"prior.background must have 3 values, got {list(background)}")
        self.mesh_path = Path(mesh_path) if mesh_path is not None else None
        self.image = image
        self.resolution = int(resolution)
        self.radius = float(radius)
        self.fovy_deg = float(fovy_deg)
        self.background = tuple(float(c) for c in background)
        self.weight = float(weight)
        self.blend_strength = bool(blend_strength)
        self.ssaa = float(ssaa)
        self.rasterizer_name = rasterizer
        self.device: torch.device | None = None
        self.mesh: Mesh | None = None
        self.rasterizer: MeshRasterizer | None = None
        self.ref_elevation = 0.0

    # ------------------------------------------------------------------ setup
    def setup(self, device: torch.device | str) -> None:
        device = torch.device(device)
        if self.mesh is not None and self.device == device:
            return
        mesh = self.mesh if self.mesh is not None else Mesh.load(self.ground_truth_path())
        self.mesh = mesh.to(device)
        self.device = device
        if self.rasterizer is None:
            self.rasterizer = build_mesh_rasterizer(self.rasterizer_name)

    def set_reference(self, image: Tensor, elevation_deg: float) -> None:
        """Only the elevation matters (the oracle knows the object); the image sets the device if not set up."""
        if self.mesh is None:
            self.setup(image.device)
        self.ref_elevation = float(elevation_deg)

    def ground_truth_path(self) -> Path:
        """The true mesh's file: what the evaluation's ground-truth metrics compare the outputs with."""
        if self.mesh_path is None:
            self.mesh_path = find_ground_truth_mesh(self.image)
        return self.mesh_path

    # ------------------------------------------------------------------ rendering
    @torch.no_grad()
    def render_absolute(self, elevation_deg: float, azimuth_deg: float, radius: float) -> tuple[Tensor, Tensor]:
        """True render (3,r,r) over the background and its coverage (1,r,r) at an absolute orbit camera."""
        if self.mesh is None or self.rasterizer is None:
            raise RuntimeError("OraclePrior.setup(device) must be called first")
        cam = orbit(elevation_deg, azimuth_deg, radius, self.fovy_deg, self.resolution, self.resolution)
        out = render_mesh(self.mesh, cam, self.rasterizer, self.background, ssaa=self.ssaa)
        return out.image, out.alpha

    @torch.no_grad()
    def render_views(self, d_elev: Tensor, d_azim: Tensor, d_radius: Tensor) -> Tensor:
        """True renders (B,3,r,r) at the relative views."""
        if self.mesh is None or self.rasterizer is None:
            raise RuntimeError("OraclePrior.setup(device) must be called first")
        n = check_relative_views(d_elev, d_azim, d_radius)
        out = [self.render_absolute(self.ref_elevation + float(d_elev[i]), float(d_azim[i]),
                                    self.radius + float(d_radius[i]))[0] for i in range(n)]
        return torch.stack(out)

    def _resize(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B,3,H,W), got {tuple(images.shape)}")
        if images.shape[-2:] != (self.resolution, self.resolution):
            images = F.interpolate(images, (self.resolution, self.resolution), mode="bilinear", align_corners=False)
        return images

    # ------------------------------------------------------------------ Prior API
    def sds(self, images: Tensor, d_elev: Tensor, d_azim: Tensor, d_radius: Tensor,
            step_ratio: float | None = None) -> SDSOutput:
        check_relative_views(d_elev, d_azim, d_radius, images.shape[0])
        x = self._resize(images)
        target = self.render_views(d_elev, d_azim, d_radius).to(x.device, x.dtype)
        loss = 0.5 * self.weight * ((x - target) ** 2).sum()
        return SDSOutput(loss=loss, timestep=None)

    @torch.no_grad()
    def refine(self, images: Tensor, d_elev: Tensor, d_azim: Tensor, d_radius: Tensor, strength: float,
               steps: int = 50) -> Tensor:
        check_relative_views(d_elev, d_azim, d_radius, images.shape[0])
        target = self.render_views(d_elev, d_azim, d_radius)
        if not self.blend_strength:
            return target
        x = self._resize(images.float()).to(target.device)
        s = float(strength)
        return (s * x + (1.0 - s) * target).clamp(0.0, 1.0)

    @torch.no_grad()
    def novel_views(self, d_elev: Tensor, d_azim: Tensor, d_radius: Tensor, steps: int = 50) -> Tensor:
        return self.render_views(d_elev, d_azim, d_radius)

    def __repr__(self) -> str:
        return f"OraclePrior(mesh={self.mesh_path}, resolution={self.resolution}, device={self.device})"
