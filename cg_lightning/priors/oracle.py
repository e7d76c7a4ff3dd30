"""A prior that knows the answer: it renders the ground-truth textured mesh at the requested view.

Why: with ``prior=oracle`` the whole pipeline (stage 1, mesh, stage 2, evaluation) runs on CPU against a known
object, so regressions in anything *but* the diffusion prior show up as numbers (Chamfer distance, novel-view PSNR).

Views: a relative view ``(d_elev, d_azim, d_radius)`` is the absolute orbit camera
``orbit(ref_elevation + d_elev, d_azim, radius + d_radius)`` (the reference view has azimuth 0, as in DreamGaussian),
rendered at ``resolution`` with ``fovy_deg`` over ``background`` (white by default, like Zero123's inputs).

- ``sds``: ``loss = 0.5 * weight * sum((x - target)^2)`` where ``x`` are the images resized bilinearly to
  ``resolution`` (as Zero123's prior does) and ``target`` the true renders; its gradient ``weight * (x - target)``
  pulls every image towards the truth (summed over the batch like Zero123's SDS; ``step_ratio`` is unused).
- ``refine``: with ``refine_target="truth"`` (the default) the true renders. With ``refine_target="aligned"`` and
  the caller's current ``geometry`` (stage 2 passes its mesh), the truth *re-projected onto that geometry*: every
  pixel the current mesh covers takes the colour of the nearest point of the true surface (among the
  ``lookup_neighbours`` nearest of ``lookup_samples`` surface samples, the nearest one whose normal faces the same
  way), pixels it does not cover the background; without geometry it falls back to the true renders. Why both:
  Zero123's refine at strength 0.8-0.95 (DDIM start t ~ 180-50 of 1000) keeps the layout of the render it is
  given, which the aligned target models; the true render is misaligned with a coarse mesh that is slightly off.
  Measured (stage 2 from CPU-preset coarse meshes, 16 truth views): box 24.75 -> 26.13 dB (truth) / 25.90
  (aligned), torus 29.91 -> 30.77 / 30.50: with a good coarse mesh the true render helps a little more, so the
  perfect oracle keeps it; the imperfect oracle uses ``aligned`` (its pose errors on a refine cost 2.3 dB on the
  torus, see ``noisy_oracle.py``). With ``blend_strength=True`` it returns ``strength * x + (1 - strength) *
  target``, mirroring Zero123's refine where a larger ``strength`` keeps more of the input.
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
REFINE_TARGETS = ("aligned", "truth")


def find_ground_truth_mesh(image: str | os.PathLike) -> Path:
    """The ground-truth mesh stored next to an input image (``model.glb|obj|ply`` in the image's directory)."""
    folder = Path(image).parent
    for name in MESH_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise InputImageError(f"prior=oracle needs the ground-truth mesh next to the image: none of {list(MESH_NAMES)} "
                          f"in {folder}. Set prior.mesh_path=... explicitly.")


def sample_coloured_surface(mesh: Mesh, n: int, rasterizer: MeshRasterizer,
                            seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` area-uniform points (n,3) on ``mesh``, their unit face normals (n,3) and colours (n,3): the texture
    sampled bilinearly at the interpolated UV (0.5 grey for a mesh without texture)."""
    tri = mesh.v.float()[mesh.f]  # (F,3,3)
    cross = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    area = cross.norm(dim=-1)
    if mesh.num_faces == 0 or float(area.sum()) <= 0:
        raise ConfigError("the ground-truth mesh has no surface area")
    g = torch.Generator().manual_seed(int(seed))
    face = torch.multinomial(area / area.sum(), n, replacement=True, generator=g)
    a, b = torch.rand(n, generator=g), torch.rand(n, generator=g)
    flip = a + b > 1
    a, b = torch.where(flip, 1 - a, a), torch.where(flip, 1 - b, b)
    bary = torch.stack([1 - a - b, a, b], -1)  # weights of the face's vertices 0, 1, 2
    points = (bary[..., None] * tri[face]).sum(1)
    normals = cross[face] / area[face].clamp_min(1e-30)[:, None]
    if mesh.albedo is None or mesh.vt is None:
        return points, normals, torch.full((n, 3), 0.5)
    uv = (bary[..., None] * mesh.vt.float()[mesh.f[face]]).sum(1)
    colours = rasterizer.texture(mesh.albedo.float()[None], uv.view(1, -1, 1, 2), filter_mode="linear")
    return points, normals, colours.reshape(n, 3).clamp(0.0, 1.0)


class OraclePrior:
    """Ground-truth renderer behind the :class:`~cg_lightning.priors.base.Prior` interface."""

    def __init__(self, mesh_path: str | None = None, image: str | None = None, resolution: int = 256,
                 radius: float = 2.0, fovy_deg: float = 49.1, background: Sequence[float] = (1.0, 1.0, 1.0),
                 weight: float = 1.0, blend_strength: bool = False, ssaa: float = 1.0,
                 rasterizer: str = "auto", refine_target: str = "truth", lookup_samples: int = 400_000,
                 lookup_neighbours: int = 4) -> None:
        if mesh_path is None and image is None:
            raise ConfigError("prior.mesh_path (or the run's image, whose folder holds model.glb) is required")
        if resolution < 8:
            raise ConfigError(f"prior.resolution={resolution} must be >= 8")
        if len(background) != 3:
            raise ConfigError(f"prior.background must have 3 values, got {list(background)}")
        if refine_target not in REFINE_TARGETS:
            raise ConfigError(f"prior.refine_target={refine_target!r}; expected one of {REFINE_TARGETS}")
        if lookup_samples < 1000 or lookup_neighbours < 1:
            raise ConfigError(f"prior.lookup_samples={lookup_samples} must be >= 1000 and prior.lookup_neighbours="
                              f"{lookup_neighbours} >= 1")
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
        self.refine_target = str(refine_target)
        self.lookup_samples, self.lookup_neighbours = int(lookup_samples), int(lookup_neighbours)
        self._lookup = None  # (cKDTree of true surface samples, their colours (N,3), their unit normals (N,3))
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

    # ------------------------------------------------------------------ truth re-projected onto a geometry
    @property
    def accepts_geometry(self) -> bool:
        """True when :meth:`refine` uses the caller's current mesh (``geometry=``); stage 2 passes it only then."""
        return self.refine_target == "aligned"

    def _surface_lookup(self):
        """Area-uniform samples of the true surface with their texture colours and unit face normals, in a k-d
        tree (built once, fixed seed: every run looks up the same samples)."""
        if self._lookup is None:
            from scipy.spatial import cKDTree

            points, normals, colours = sample_coloured_surface(self.mesh.to("cpu"), self.lookup_samples,
                                                               self.rasterizer, seed=0)
            self._lookup = (cKDTree(points.double().numpy()), colours, normals)
        return self._lookup

    @torch.no_grad()
    def render_aligned(self, geometry: Mesh, elevation_deg: float, azimuth_deg: float,
                       radius: float) -> tuple[Tensor, Tensor]:
        """The truth re-projected onto ``geometry`` at an absolute orbit camera: (3,r,r) on the background and the
        geometry's binary coverage (1,r,r). Each covered pixel's surface point takes the colour of the nearest true
        surface sample whose normal agrees with the geometry's (the nearest sample when none does)."""
        if self.mesh is None or self.rasterizer is None:
            raise RuntimeError("OraclePrior.setup(device) must be called first")
        tree, colours, normals = self._surface_lookup()
        r = self.resolution
        cam = orbit(elevation_deg, azimuth_deg, radius, self.fovy_deg, r, r)
        v = geometry.v.detach().float().cpu()
        vn = geometry.vn if geometry.vn is not None else geometry.auto_normals().vn
        pos = (F.pad(v, (0, 1), value=1.0) @ cam.mvp_gl.T)[None]
        tri = geometry.f.cpu().to(torch.int32)
        rast = self.rasterizer.rasterize(pos, tri, (r, r))
        inter = self.rasterizer.interpolate(torch.cat([v, vn.detach().float().cpu()], -1), rast, tri)[0]
        covered = rast[0, ..., 3] > 0
        pts, nrm = inter[..., :3][covered], inter[..., 3:6][covered]
        k = min(self.lookup_neighbours, len(colours))
        _, idx = tree.query(pts.numpy(), k=k)
        idx = torch.from_numpy(idx.reshape(len(pts), k)).long()
        agree = (normals[idx] * nrm[:, None, :]).sum(-1) > 0  # (P,k), neighbours ordered by distance
        first = torch.where(agree.any(1), agree.float().argmax(1), torch.zeros(len(pts), dtype=torch.long))
        chosen = idx.gather(1, first[:, None])[:, 0]
        bg = torch.tensor(self.background, dtype=torch.float32)
        image = bg.view(1, 1, 3).expand(r, r, 3).clone()
        image[covered] = colours[chosen]
        return image.permute(2, 0, 1).to(self.device), covered[None].float().to(self.device)

    def _aligned_views(self, geometry: Mesh, d_elev: Tensor, d_azim: Tensor, d_radius: Tensor) -> Tensor:
        n = check_relative_views(d_elev, d_azim, d_radius)
        return torch.stack([self.render_aligned(geometry, self.ref_elevation + float(d_elev[i]), float(d_azim[i]),
                                                self.radius + float(d_radius[i]))[0] for i in range(n)])

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
               steps: int = 50, geometry: Mesh | None = None) -> Tensor:
        """The refined views (module docstring): aligned with ``geometry`` when given and ``refine_target`` is
        ``aligned``, else the true renders."""
        check_relative_views(d_elev, d_azim, d_radius, images.shape[0])
        if geometry is not None and self.accepts_geometry:
            target = self._aligned_views(geometry, d_elev, d_azim, d_radius)
        else:
            target = self.render_views(d_elev, d_azim, d_radius)
        return self._blend(images, target, strength)

    def _blend(self, images: Tensor, target: Tensor, strength: float) -> Tensor:
        """``target``, or with ``blend_strength`` ``strength * images + (1 - strength) * target``."""
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
