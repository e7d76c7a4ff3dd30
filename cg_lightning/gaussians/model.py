"""The 3D Gaussian set optimised in stage 1.

One ``nn.Parameter`` per property, stored raw (pre-activation) exactly like 3DGS so that the .ply file, the
Adam param-group names and the density-control surgery all speak about the same tensors: position (identity),
SH coefficients (identity), opacity (sigmoid), scale (exp), rotation quaternion wxyz (normalise).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cg_lightning.gaussians.sh import MAX_SH_DEGREE, SH_C0, num_sh_coeffs

__all__ = ["GaussianModel", "knn_mean_sq_dist", "quat_to_rotmat", "inverse_sigmoid"]


def inverse_sigmoid(x: Tensor) -> Tensor:
    return torch.log(x / (1.0 - x))


def quat_to_rotmat(q: Tensor) -> Tensor:
    """Rotation matrices (N, 3, 3) from (not necessarily unit) quaternions (N, 4) ordered w, x, y, z."""
    w, x, y, z = F.normalize(q, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(q.shape[:-1] + (3, 3))


def knn_mean_sq_dist(points: Tensor, k: int = 3, chunk: int = 2048, kdtree_above: int = 50_000) -> Tensor:
    """Mean squared distance of every point to its ``k`` nearest other points (N,), without CUDA extensions.

    Replaces simple-knn's ``distCUDA2``. Exact brute force in row chunks (O(N^2) work, O(chunk * N) memory)
    for moderate N; a scipy KD-tree on CPU for large clouds.
    """
    n = points.shape[0]
    if n <= 1:
        return torch.zeros(n, dtype=points.dtype, device=points.device)
    k_eff = min(k, n - 1)
    if n > kdtree_above:
        from scipy.spatial import cKDTree

        pts = points.detach().double().cpu().numpy()
        dist, _ = cKDTree(pts).query(pts, k=k_eff + 1)
        d2 = torch.from_numpy(dist[:, 1:] ** 2).mean(dim=1)
        return d2.to(device=points.device, dtype=points.dtype)
    pts = points.detach()
    out = []
    for start in range(0, n, chunk):
        block = pts[start : start + chunk]
        d2 = torch.cdist(block, pts, compute_mode="donot_use_mm_for_euclid_dist").square_()
        rows = torch.arange(block.shape[0], device=pts.device)
        d2[rows, rows + start] = float("inf")  # exclude the point itself, not its duplicates
        out.append(d2.topk(k_eff, dim=1, largest=False).values.mean(dim=1))
    return torch.cat(out)


class GaussianModel(nn.Module):
    """Raw Gaussian parameters plus their activated views; see the module docstring."""

    PARAM_NAMES = ("xyz", "features_dc", "features_rest", "opacity", "scaling", "rotation")

    def __init__(
        self,
        xyz: Tensor,
        features_dc: Tensor,
        features_rest: Tensor,
        opacity: Tensor,
        scaling: Tensor,
        rotation: Tensor,
        sh_degree: int = 0,
    ) -> None:
        super().__init__()
        if not 0 <= sh_degree <= MAX_SH_DEGREE:
            raise ValueError(f"sh_degree must be in [0, {MAX_SH_DEGREE}], got {sh_degree}")
        self.sh_degree = int(sh_degree)
        self.replace_(
            dict(
                xyz=xyz,
                features_dc=features_dc,
                features_rest=features_rest,
                opacity=opacity,
                scaling=scaling,
                rotation=rotation,
            )
        )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def empty(cls, num_points: int, sh_degree: int = 0) -> GaussianModel:
        """Zero-filled model of the right shapes, e.g. to receive a checkpoint's state dict."""
        n, k = int(num_points), num_sh_coeffs(sh_degree)
        return cls(
            torch.zeros(n, 3),
            torch.zeros(n, 1, 3),
            torch.zeros(n, k - 1, 3),
            torch.zeros(n, 1),
            torch.zeros(n, 3),
            torch.zeros(n, 4),
            sh_degree=sh_degree,
        )

    @classmethod
    def from_points(
        cls, points: Tensor, rgb: Tensor, sh_degree: int = 0, opacity: float = 0.1
    ) -> GaussianModel:
        """3DGS ``create_from_pcd``: isotropic 3-NN scale, identity rotation, constant opacity."""
        points = points.float()
        n = points.shape[0]
        dist2 = knn_mean_sq_dist(points, k=3).clamp_min(1e-7)
        scaling = torch.log(torch.sqrt(dist2))[:, None].repeat(1, 3)
        rotation = torch.zeros(n, 4, device=points.device)
        rotation[:, 0] = 1.0
        dc = ((rgb.float() - 0.5) / SH_C0)[:, None, :]
        rest = torch.zeros(n, num_sh_coeffs(sh_degree) - 1, 3, device=points.device)
        opac = inverse_sigmoid(torch.full((n, 1), opacity, device=points.device))
        return cls(points, dc, rest, opac, scaling, rotation, sh_degree=sh_degree)

    @classmethod
    def random_ball(
        cls,
        num_points: int = 5000,
        radius: float = 0.5,
        sh_degree: int = 0,
        generator: torch.Generator | None = None,
    ) -> GaussianModel:
        """DreamGaussian's initialisation: uniform in a ball, near-grey colour, opacity 0.1."""
        g = dict(generator=generator)
        phi = torch.rand(num_points, **g) * 2.0 * math.pi
        cos_t = torch.rand(num_points, **g) * 2.0 - 1.0
        r = radius * torch.rand(num_points, **g).pow(1.0 / 3.0)
        sin_t = torch.sqrt((1.0 - cos_t * cos_t).clamp_min(0.0))
        pts = torch.stack([r * sin_t * torch.cos(phi), r * sin_t * torch.sin(phi), r * cos_t], dim=-1)
        shs = torch.rand(num_points, 3, **g) / 255.0  # DG stores SH2RGB(shs) and converts back: dc == shs
        return cls.from_points(pts, shs * SH_C0 + 0.5, sh_degree=sh_degree)

    # ------------------------------------------------------------------ parameter plumbing
    def named_tensors(self) -> dict[str, nn.Parameter]:
        return {name: getattr(self, name) for name in self.PARAM_NAMES}

    def replace_(self, tensors: dict[str, Tensor | nn.Parameter]) -> None:
        """Swap in new tensors (after densification or loading); plain tensors become trainable Parameters."""
        for name, t in tensors.items():
            if name not in self.PARAM_NAMES:
                raise KeyError(f"unknown Gaussian parameter {name!r}")
            p = t if isinstance(t, nn.Parameter) else nn.Parameter(t.detach().clone(), requires_grad=True)
            self._parameters[name] = p
        if len(self._parameters) == len(self.PARAM_NAMES):
            self._check_shapes()

    def resize_(self, n: int) -> None:
        """Resize every parameter to ``n`` points (zeros), e.g. before ``load_state_dict`` of a densified
        model."""
        new = {}
        for name, p in self.named_tensors().items():
            new[name] = nn.Parameter(
                torch.zeros((int(n),) + tuple(p.shape[1:]), dtype=p.dtype, device=p.device),
                requires_grad=p.requires_grad,
            )
        self.replace_(new)

    def _check_shapes(self) -> None:
        n, k = self.xyz.shape[0], num_sh_coeffs(self.sh_degree)
        expected = dict(
            xyz=(n, 3),
            features_dc=(n, 1, 3),
            features_rest=(n, k - 1, 3),
            opacity=(n, 1),
            scaling=(n, 3),
            rotation=(n, 4),
        )
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"{name} has shape {tuple(getattr(self, name).shape)}, expected {shape}")

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        """Accept checkpoints with a different number of points: resize first, then copy."""
        key = prefix + "xyz"
        if key in state_dict and state_dict[key].shape[0] != self.num_points:
            self.resize_(state_dict[key].shape[0])
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # ------------------------------------------------------------------ activated views
    @property
    def num_points(self) -> int:
        return int(self.xyz.shape[0])

    @property
    def means(self) -> Tensor:
        return self.xyz

    @property
    def opacities(self) -> Tensor:
        return torch.sigmoid(self.opacity)

    @property
    def scales(self) -> Tensor:
        return torch.exp(self.scaling)

    @property
    def rotations(self) -> Tensor:
        return F.normalize(self.rotation, dim=-1)

    @property
    def sh(self) -> Tensor:
        return torch.cat([self.features_dc, self.features_rest], dim=1)

    @property
    def colors(self) -> Tensor:
        """View-independent RGB from the DC term: ``max(C0 * dc + 0.5, 0)`` (N, 3)."""
        return (SH_C0 * self.features_dc[:, 0] + 0.5).clamp_min(0.0)

    def covariances(self, scale_modifier: float = 1.0) -> Tensor:
        """World-space covariances ``R S S^T R^T`` (N, 3, 3)."""
        m = quat_to_rotmat(self.rotation) * (self.scales * scale_modifier)[:, None, :]
        return m @ m.transpose(1, 2)

    def extra_repr(self) -> str:
        return f"num_points={self.num_points}, sh_degree={self.sh_degree}"
