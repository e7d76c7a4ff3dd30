"""Cameras in DreamGaussian's convention and their conversions to what each rasterizer expects.

World and camera frames are OpenGL: +x right, +y up, the camera looks along its -z axis and the front of the
object faces +z. Orbit angles are in degrees: elevation -90 puts the camera on top (+y), azimuth 0 in front
(+z), azimuth 90 on the +x side. Everything is derived from ``c2w`` plus a vertical field of view, so a camera
is a small value object.

Pixel convention (used by ``K`` and the torch Gaussian rasterizer): pixel ``(i, j)`` covers ``[i, i+1) x [j,
j+1)``, its centre is at ``(i + 0.5, j + 0.5)`` and the principal point is the image centre ``(W/2, H/2)``.
This is the same geometry as diff-gaussian-rasterization's ``((ndc + 1) * W - 1) / 2`` (centres at integers)
shifted by half a pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

__all__ = ["Camera", "orbit_camera", "orbit", "zero123_pose", "camera_position"]

# OpenGL camera (x right, y up, looks along -z) -> OpenCV camera (x right, y down, looks along +z).
_GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


def camera_position(elevation_deg: float, azimuth_deg: float, radius: float = 2.0) -> Tensor:
    """Position of an orbit camera relative to its target: ``(r cos e sin a, -r sin e, r cos e cos a)``."""
    e, a = math.radians(elevation_deg), math.radians(azimuth_deg)
    return torch.tensor(
        [radius * math.cos(e) * math.sin(a), -radius * math.sin(e), radius * math.cos(e) * math.cos(a)],
        dtype=torch.float64,
    )


def orbit_camera(
    elevation_deg: float, azimuth_deg: float, radius: float = 2.0, target: Sequence[float] = (0.0, 0.0, 0.0)
) -> Tensor:
    """Camera-to-world matrix (4, 4, float32, OpenGL) of a camera on a sphere looking at ``target``.

    Columns of the rotation are [right, up, backward]: backward = unit(campos - target), right = unit(y x
    backward), up = backward x right. ``right`` is taken as ``(cos a, 0, -sin a)`` (the exact value of unit(y
    x backward) for |elevation| < 90), which stays well defined at the poles where the cross product vanishes.
    """
    e, a = math.radians(elevation_deg), math.radians(azimuth_deg)
    back = torch.tensor(
        [math.cos(e) * math.sin(a), -math.sin(e), math.cos(e) * math.cos(a)], dtype=torch.float64
    )
    right = torch.tensor([math.cos(a), 0.0, -math.sin(a)], dtype=torch.float64)
    up = torch.linalg.cross(back, right)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2] = right, up, back
    c2w[:3, 3] = torch.tensor(list(target), dtype=torch.float64) + radius * back
    return c2w.float()


@dataclass(frozen=True, eq=False)
class Camera:
    """A pinhole camera: pose (OpenGL c2w), vertical fov in radians, image size and clip planes."""

    c2w: Tensor
    fovy: float
    width: int
    height: int
    near: float = 0.01
    far: float = 100.0

    # ---------------------------------------------------------------- intrinsics
    @property
    def tanfovy(self) -> float:
        return math.tan(0.5 * self.fovy)

    @property
    def tanfovx(self) -> float:
        return self.tanfovy * self.width / self.height

    @property
    def fovx(self) -> float:
        return 2.0 * math.atan(self.tanfovx)

    @property
    def fx(self) -> float:
        return 0.5 * self.width / self.tanfovx

    @property
    def fy(self) -> float:
        return 0.5 * self.height / self.tanfovy

    @property
    def cx(self) -> float:
        return 0.5 * self.width

    @property
    def cy(self) -> float:
        return 0.5 * self.height

    @property
    def K(self) -> Tensor:
        """3x3 OpenCV intrinsics (pixel centres at +0.5, see module docstring)."""
        return torch.tensor(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]],
            dtype=torch.float32,
            device=self.device,
        )

    # ---------------------------------------------------------------- extrinsics
    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def position(self) -> Tensor:
        return self.c2w[:3, 3]

    @property
    def w2c_gl(self) -> Tensor:
        """World -> OpenGL camera (4, 4)."""
        return torch.linalg.inv(self.c2w.double()).float()

    @property
    def w2c(self) -> Tensor:
        """World -> OpenCV camera (x right, y down, z forward), as used by gsplat and 3DGS."""
        return _GL_TO_CV.to(self.device) @ self.w2c_gl

    # ---------------------------------------------------------------- projections
    @property
    def proj_gl(self) -> Tensor:
        """OpenGL projection with DG's row flip (``-1/tan`` in row 1): NDC y = -1 is image row 0."""
        n, f = self.near, self.far
        return torch.tensor(
            [
                [1.0 / self.tanfovx, 0.0, 0.0, 0.0],
                [0.0, -1.0 / self.tanfovy, 0.0, 0.0],
                [0.0, 0.0, -(f + n) / (f - n), -2.0 * f * n / (f - n)],
                [0.0, 0.0, -1.0, 0.0],
            ],
            dtype=torch.float32,
            device=self.device,
        )

    @property
    def mvp_gl(self) -> Tensor:
        """Clip-space transform for mesh rasterizers (nvdiffrast style): ``proj_gl @ inv(c2w)``."""
        return self.proj_gl @ self.w2c_gl

    @property
    def proj_3dgs(self) -> Tensor:
        """3DGS projection (column-vector form) acting on OpenCV camera coordinates; w = z_cam."""
        n, f = self.near, self.far
        return torch.tensor(
            [
                [1.0 / self.tanfovx, 0.0, 0.0, 0.0],
                [0.0, 1.0 / self.tanfovy, 0.0, 0.0],
                [0.0, 0.0, f / (f - n), -f * n / (f - n)],
                [0.0, 0.0, 1.0, 0.0],
            ],
            dtype=torch.float32,
            device=self.device,
        )

    @property
    def world_view_transform(self) -> Tensor:
        """diff-gaussian-rasterization ``viewmatrix``: OpenCV w2c transposed (row-vector convention)."""
        return self.w2c.T.contiguous()

    @property
    def full_proj_transform(self) -> Tensor:
        """diff-gaussian-rasterization ``projmatrix``: ``(proj_3dgs @ w2c)`` transposed."""
        return (self.proj_3dgs @ self.w2c).T.contiguous()

    # ---------------------------------------------------------------- copies
    def to(self, device: torch.device | str) -> Camera:
        return replace(self, c2w=self.c2w.to(device))

    def resized(self, width: int, height: int) -> Camera:
        """Same pose and vertical fov at another resolution (horizontal fov follows the aspect ratio)."""
        return replace(self, width=int(width), height=int(height))


def orbit(
    elevation_deg: float,
    azimuth_deg: float,
    radius: float = 2.0,
    fovy_deg: float = 49.1,
    width: int = 256,
    height: int = 256,
    target: Sequence[float] = (0.0, 0.0, 0.0),
) -> Camera:
    """Orbit camera with DreamGaussian's defaults (radius 2, fovy 49.1 deg, near 0.01, far 100)."""
    return Camera(
        c2w=orbit_camera(elevation_deg, azimuth_deg, radius, target),
        fovy=math.radians(fovy_deg),
        width=int(width),
        height=int(height),
    )


def zero123_pose(d_elev_deg: Tensor, d_azim_deg: Tensor, d_radius: Tensor) -> Tensor:
    """Zero123(-XL) relative camera embedding ``[rad(d_elev), sin(rad d_azim), cos(rad d_azim), d_radius]``
    (B, 4).

    DreamGaussian's elevation sign equals Zero123's polar sign, so deltas pass through unchanged.
    """
    de = torch.deg2rad(torch.as_tensor(d_elev_deg, dtype=torch.float32))
    da = torch.deg2rad(torch.as_tensor(d_azim_deg, dtype=torch.float32, device=de.device))
    dr = torch.as_tensor(d_radius, dtype=torch.float32, device=de.device)
    de, da, dr = torch.broadcast_tensors(de.reshape(-1), da.reshape(-1), dr.reshape(-1))
    return torch.stack([de, torch.sin(da), torch.cos(da), dr], dim=-1)
