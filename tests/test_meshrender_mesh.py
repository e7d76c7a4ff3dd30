"""Mesh container: validation, area-weighted normals, loading obj/glb/ply with textures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from cg_lightning.errors import InputImageError
from cg_lightning.mesh import Mesh
from cg_lightning.mesh.export import write_glb, write_obj


def textured_sphere() -> Mesh:
    s = trimesh.creation.icosphere(1, radius=0.5)
    v = torch.tensor(s.vertices, dtype=torch.float32)
    vt = torch.stack([v[:, 0] + 0.5, v[:, 1] + 0.5], 1).clamp(0, 1)
    albedo = torch.linspace(0, 1, 12 * 20 * 3).reshape(12, 20, 3)
    return Mesh(v=v, f=torch.tensor(s.faces), vt=vt, albedo=albedo)


def test_area_weighted_normals_and_degenerate_default():
    # two triangles sharing vertex 0: a big one in the z=0 plane, a small one in the x=0 plane
    v = torch.tensor([[0.0, 0, 0], [4, 0, 0], [0, 4, 0], [0, 0, 1], [0, 1, 0], [9, 9, 9]])
    f = torch.tensor([[0, 1, 2], [0, 3, 4]])
    m = Mesh(v, f).auto_normals()
    n0 = np.array([0, 0, 16.0]) + np.array([-1.0, 0, 0])  # face normals of length 2 * area
    np.testing.assert_allclose(m.vn[0].numpy(), n0 / np.linalg.norm(n0), atol=1e-6)
    np.testing.assert_allclose(m.vn[1].numpy(), [0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(m.vn[3].numpy(), [-1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(m.vn[5].numpy(), [0, 0, 1])  # unused vertex -> default, never NaN
    degenerate = Mesh(torch.tensor([[0.0, 0, 0], [1, 1, 1], [2, 2, 2]]), torch.tensor([[0, 1, 2]])).auto_normals()
    assert torch.equal(degenerate.vn, torch.tensor([[0.0, 0, 1]]).expand(3, 3))


def test_validation_bounds_and_to():
    with pytest.raises(ValueError, match="Mesh.f indexes"):
        Mesh(torch.zeros(3, 3), torch.tensor([[0, 1, 3]]))
    with pytest.raises(ValueError, match="vt"):
        Mesh(torch.zeros(3, 3), torch.tensor([[0, 1, 2]]), vt=torch.zeros(2, 2))
    m = Mesh(torch.tensor([[0.0, -1, 2], [1, 0, 0], [-3, 2, 1]]), torch.tensor([[0, 1, 2]], dtype=torch.int32))
    assert m.f.dtype == torch.long
    lo, hi = m.bounds()
    assert lo.tolist() == [-3, -1, 0] and hi.tolist() == [1, 2, 2]
    assert m.to("cpu").v.device.type == "cpu" and m.num_faces == 1 and m.num_vertices == 3


@pytest.mark.parametrize("fmt", ["obj", "glb"])
def test_load_roundtrip_keeps_vertices_uvs_texture(tmp_path, fmt):
    mesh = textured_sphere()
    path = tmp_path / f"m.{fmt}"
    (write_obj if fmt == "obj" else write_glb)(mesh, path)
    back = Mesh.load(path)
    assert back.num_vertices == mesh.num_vertices and back.num_faces == mesh.num_faces
    torch.testing.assert_close(back.v, mesh.v, atol=1e-5, rtol=0)
    assert torch.equal(back.f, mesh.f)
    torch.testing.assert_close(back.vt, mesh.vt, atol=1e-5, rtol=0)  # v stays top-row-first both ways
    assert back.albedo.shape == mesh.albedo.shape
    torch.testing.assert_close(back.albedo, mesh.albedo, atol=0.5 / 255 + 1e-6, rtol=0)
    assert back.vn is not None and torch.allclose(back.vn.norm(dim=-1), torch.ones(back.num_vertices))


def test_load_ply_without_texture_and_errors(tmp_path):
    s = trimesh.creation.box()
    s.export(tmp_path / "box.ply")
    m = Mesh.load(tmp_path / "box.ply")
    assert m.num_faces == 12 and m.vt is None and m.albedo is None
    with pytest.raises(InputImageError, match="not found"):
        Mesh.load(tmp_path / "missing.glb")
    (tmp_path / "bad.obj").write_text("this is not a mesh\n")
    with pytest.raises(InputImageError):
        Mesh.load(tmp_path / "bad.obj")
