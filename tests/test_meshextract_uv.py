"""xatlas UV unwrap: seams split into one index buffer, geometry unchanged, UVs valid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from cg_lightning.errors import ConfigError
from cg_lightning.mesh.mesh import Mesh
from cg_lightning.mesh.uv import unwrap_uv, unwrap_uv_arrays


def test_unwrap_keeps_geometry_and_aligns_buffers():
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    v_in, f_in = sphere.vertices.astype(np.float32), sphere.faces.astype(np.int64)
    vmap, f, vt = unwrap_uv_arrays(v_in, f_in, texture_size=256, padding=2)
    assert len(f) == len(f_in)
    assert len(vmap) == len(vt) > len(v_in)  # seam vertices duplicated
    np.testing.assert_array_equal(v_in[vmap][f], v_in[f_in])  # same corners, same order, same winding
    assert vt.min() >= 0.0 and vt.max() <= 1.0
    tri = vt[f]
    area = 0.5 * np.abs((tri[:, 1, 0] - tri[:, 0, 0]) * (tri[:, 2, 1] - tri[:, 0, 1])
                        - (tri[:, 2, 0] - tri[:, 0, 0]) * (tri[:, 1, 1] - tri[:, 0, 1]))
    assert (area > 0).all()  # no collapsed UV triangle
    assert 0.3 < area.sum() <= 1.0  # charts are packed, not overlapping the whole square several times


def _vertex_ids(v: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
    """Index of the input vertex at each (copied) vertex position."""
    return torch.cdist(v.double(), v_in.double()).argmin(1)


def _chart_clashes(vt: np.ndarray, f: np.ndarray, size: int) -> int:
    """Number of 8-neighbouring texel pairs covered by two different charts (a bilinear splat there bleeds)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from cg_lightning.render.mesh import TorchMeshRasterizer

    n_f, n_v = len(f), len(vt)
    rows = np.repeat(np.arange(n_f), 3)
    graph = coo_matrix((np.ones(3 * n_f), (rows, n_f + f.reshape(-1))), shape=(n_f + n_v,) * 2)
    _, labels = connected_components(graph, directed=False)
    chart = labels[:n_f]  # faces sharing (split) vertices belong to one chart
    uv = torch.from_numpy(vt).double()
    pos = torch.cat([uv * 2 - 1, torch.zeros(n_v, 1, dtype=uv.dtype), torch.ones(n_v, 1, dtype=uv.dtype)], 1)
    rast = TorchMeshRasterizer().rasterize(pos[None].float(), torch.from_numpy(f).int(), (size, size))
    tri = rast[0, ..., 3].long().numpy()
    owner = np.where(tri > 0, chart[np.maximum(tri - 1, 0)], -1)
    padded = np.pad(owner, 1, constant_values=-1)
    clashes = 0
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        b = padded[1 + dy:size + 1 + dy, 1 + dx:size + 1 + dx]
        clashes += int(((owner >= 0) & (b >= 0) & (owner != b)).sum())
    return clashes


def test_gutters_separate_charts_at_texture_resolution():
    """With padding, no two charts touch at the texture resolution, so bilinear splats stay in their chart."""
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    size = 128
    _, f, vt = unwrap_uv_arrays(sphere.vertices, sphere.faces, texture_size=size, padding=2)
    assert _chart_clashes(vt, f, size) == 0
    # negative control: xatlas' defaults (DG) pack charts edge to edge
    _, f0, vt0 = unwrap_uv_arrays(sphere.vertices, sphere.faces, texture_size=None, padding=0)
    assert _chart_clashes(vt0, f0, size) > 0


def test_unwrap_mesh_wrapper_normals_and_device():
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    mesh = Mesh(v=torch.tensor(sphere.vertices, dtype=torch.float32), f=torch.tensor(sphere.faces),
                albedo=torch.zeros(4, 4, 3))
    out = unwrap_uv(mesh)
    assert out.vt is not None and out.vn is not None and out.albedo is None
    assert out.vt.shape == (out.num_vertices, 2) and out.vn.shape == (out.num_vertices, 3)
    # on a sphere centred at the origin the area-weighted normals point radially outwards
    cos = (out.vn * torch.nn.functional.normalize(out.v, dim=1)).sum(1)
    assert float(cos.min()) > 0.98
    # official: normals recomputed on the split mesh, so copies of a seam vertex differ (a crease along seams)
    unsplit = mesh.auto_normals().vn[_vertex_ids(out.v, mesh.v)]
    torch.testing.assert_close(out.vn, Mesh(v=out.v, f=out.f).auto_normals().vn)
    assert float((out.vn - unsplit).abs().max()) > 0.01
    # seam_normals="shared": copies of a seam vertex share the normal of the unsplit mesh (no crease)
    shared = unwrap_uv(mesh, seam_normals="shared")
    torch.testing.assert_close(shared.vn, mesh.auto_normals().vn[_vertex_ids(shared.v, mesh.v)])
    assert out.v.device == mesh.v.device and out.f.dtype == torch.long
    with pytest.raises(ConfigError, match="seam_normals"):
        unwrap_uv(mesh, seam_normals="average")
