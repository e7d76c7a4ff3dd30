"""Standard 3DGS point-cloud .ply (binary little endian, float32), readable by common Gaussian-splat viewers.

Vertex properties in order: x y z, nx ny nz (zeros), f_dc_0..2, f_rest_0..(3*(K-1)-1) (channel-major: all red
coefficients first), opacity (logit), scale_0..2 (log), rot_0..3 (raw quaternion wxyz). Values are the raw
parameters, so save -> load is bit-exact.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from cg_lightning.errors import CGError
from cg_lightning.gaussians.model import GaussianModel
from cg_lightning.gaussians.sh import MAX_SH_DEGREE
from cg_lightning.utils.atomic import atomic_path

__all__ = ["save_ply", "load_ply", "ply_attribute_names"]


def ply_attribute_names(sh_degree: int) -> list[str]:
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (
        ["x", "y", "z", "nx", "ny", "nz"]
        + [f"f_dc_{i}" for i in range(3)]
        + [f"f_rest_{i}" for i in range(n_rest)]
        + ["opacity"]
        + [f"scale_{i}" for i in range(3)]
        + [f"rot_{i}" for i in range(4)]
    )


def save_ply(path: str | os.PathLike, model: GaussianModel) -> Path:
    """Write ``model`` atomically to ``path`` (parents created)."""
    from plyfile import PlyData, PlyElement

    t = {k: v.detach().float().cpu() for k, v in model.named_tensors().items()}
    n = model.num_points
    cols = [
        t["xyz"],
        torch.zeros(n, 3),
        t["features_dc"].transpose(1, 2).reshape(n, -1),
        t["features_rest"].transpose(1, 2).reshape(n, -1),
        t["opacity"],
        t["scaling"],
        t["rotation"],
    ]
    data = torch.cat(cols, dim=1).numpy().astype("<f4")
    names = ply_attribute_names(model.sh_degree)
    assert data.shape[1] == len(names)
    vertex = np.empty(n, dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        vertex[name] = data[:, i]
    dest = Path(path)
    with atomic_path(dest) as tmp:
        PlyData([PlyElement.describe(vertex, "vertex")], byte_order="<").write(str(tmp))
    return dest


def load_ply(path: str | os.PathLike, device: torch.device | str = "cpu") -> GaussianModel:
    """Read a 3DGS .ply (any SH degree up to 3) into a ``GaussianModel``."""
    from plyfile import PlyData

    path = Path(path)
    if not path.is_file():
        raise CGError(f"Gaussian .ply not found: {path}")
    try:
        vertex = PlyData.read(str(path))["vertex"]
    except Exception as exc:  # plyfile raises several types for malformed files
        raise CGError(f"cannot read Gaussian .ply {path}: {exc}") from exc
    props = [p.name for p in vertex.properties]
    n_rest = sum(1 for p in props if p.startswith("f_rest_"))
    degree = round(math.sqrt(n_rest / 3 + 1)) - 1
    if 3 * ((degree + 1) ** 2 - 1) != n_rest or not 0 <= degree <= MAX_SH_DEGREE:
        raise CGError(f"{path}: {n_rest} f_rest_* properties do not match an SH degree <= {MAX_SH_DEGREE}")
    missing = [
        name for name in ply_attribute_names(degree) if name not in props and name not in ("nx", "ny", "nz")
    ]
    if missing:
        raise CGError(f"{path} is not a 3DGS point cloud: missing properties {missing[:6]}")

    def cols(names: list[str]) -> torch.Tensor:
        return torch.from_numpy(
            np.stack([np.asarray(vertex[name], dtype=np.float32) for name in names], axis=1)
        )

    n = len(vertex.data)
    k = (degree + 1) ** 2
    rest = cols([f"f_rest_{i}" for i in range(n_rest)]) if n_rest else torch.zeros(n, 0)
    model = GaussianModel(
        xyz=cols(["x", "y", "z"]),
        features_dc=cols([f"f_dc_{i}" for i in range(3)]).reshape(n, 3, 1).transpose(1, 2),
        features_rest=rest.reshape(n, 3, k - 1).transpose(1, 2),
        opacity=cols(["opacity"]),
        scaling=cols([f"scale_{i}" for i in range(3)]),
        rotation=cols([f"rot_{i}" for i in range(4)]),
        sh_degree=degree,
    )
    return model.to(device)
