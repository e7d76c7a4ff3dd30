"""pymeshlab cleanup: floaters removed, duplicates merged, remeshing to the target edge, face budget."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from cg_lightning.errors import CGError
from cg_lightning.mesh.cleanup import EmptyMeshError, clean_mesh


def sphere_with_floater() -> tuple[np.ndarray, np.ndarray]:
    """Unit-ish sphere (radius 0.5) + a tiny far-away sphere + duplicated vertices/faces of the main sphere."""
    big = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    small = trimesh.creation.icosphere(subdivisions=1, radius=0.02)
    small.apply_translation([0.9, 0.0, 0.0])
    v = np.concatenate([big.vertices, small.vertices, big.vertices])  # 3rd part: unreferenced duplicates
    f = np.concatenate([big.faces, small.faces + len(big.vertices), big.faces[:50]])  # 50 duplicated faces
    return v.astype(np.float32), f.astype(np.int64)


def edge_lengths(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    e = trimesh.Trimesh(v, f, process=False).edges_unique
    return np.linalg.norm(v[e[:, 0]] - v[e[:, 1]], axis=1)


def test_cleanup_removes_floaters_and_remeshes():
    v, f = sphere_with_floater()
    out_v, out_f = clean_mesh(v, f, remesh=True, remesh_size=0.05, max_faces=100_000)
    tm = trimesh.Trimesh(out_v, out_f, process=False)
    assert len(tm.split(only_watertight=False)) == 1  # floater gone
    assert tm.is_watertight
    assert float(out_v[:, 0].max()) < 0.6  # nothing left near the floater at x=0.9
    radii = np.linalg.norm(out_v, axis=1)
    assert np.abs(radii - 0.5).max() < 0.01
    lengths = edge_lengths(out_v, out_f)
    assert np.median(lengths) == pytest.approx(0.05, rel=0.3)
    assert out_v.dtype == np.float32 and out_f.dtype == np.int64


def test_cleanup_decimates_to_face_budget_and_accepts_torch():
    torch = pytest.importorskip("torch")
    big = trimesh.creation.icosphere(subdivisions=4, radius=0.5)  # 5120 faces
    out_v, out_f = clean_mesh(torch.tensor(big.vertices, dtype=torch.float32), torch.tensor(big.faces),
                              remesh=False, max_faces=1000)
    assert 900 <= len(out_f) <= 1000
    assert trimesh.Trimesh(out_v, out_f, process=False).is_watertight
    # without a budget problem the mesh stays untouched in size
    same_v, same_f = clean_mesh(big.vertices, big.faces, remesh=False, max_faces=100_000)
    assert len(same_f) == len(big.faces)


def test_cleanup_merges_split_vertices():
    big = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    # un-share every vertex (as a raw triangle soup would be): each face gets its own 3 vertices
    soup_v = big.vertices[big.faces].reshape(-1, 3)
    soup_f = np.arange(len(soup_v)).reshape(-1, 3)
    out_v, out_f = clean_mesh(soup_v, soup_f, remesh=False)
    assert len(out_v) == len(big.vertices)
    assert trimesh.Trimesh(out_v, out_f, process=False).is_watertight


def test_cleanup_empty_inputs_raise():
    with pytest.raises(EmptyMeshError):
        clean_mesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
    # a mesh made only of a small component (< 64 faces) is all floater
    tiny = trimesh.creation.icosphere(subdivisions=0, radius=0.1)  # 20 faces < 64
    with pytest.raises(EmptyMeshError, match="floaters"):
        clean_mesh(tiny.vertices, tiny.faces, remesh=False)
    assert issubclass(EmptyMeshError, CGError)
