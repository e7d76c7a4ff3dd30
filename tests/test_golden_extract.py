"""Golden: mesh extraction and cleanup against DG ``extract_fields`` / ``extract_mesh`` / ``mesh_utils.clean_mesh``.

Fixture: tests/golden/extract.npz (tests/golden/README.md). The grid is compared at the float32 rounding level of the
official block evaluation (the official exact quadratic form vs our block-local monomial expansion: 4.5e-6 on the
round set, 4.2e-5 on the thin discs, where Sigma^-1 ~ 5e4 amplifies the float32 rounding of the expansion);
marching-cubes counts and the cleaned mesh (counts and the rounded-vertex hash) must be identical.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from cg_lightning.mesh.cleanup import EmptyMeshError, clean_mesh
from cg_lightning.mesh.extract import (
    covariances_from_scales_rotations,
    density_grid_from_tensors,
    marching_cubes,
)

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def fx():
    return dict(np.load(GOLDEN / "extract.npz"))


def vhash4(v: np.ndarray) -> str:
    """The fixture's vertex hash: rows of round(float64(v), 4) + 0.0 sorted lexicographically, sha256 of the bytes."""
    r = np.round(v.astype(np.float64), 4) + 0.0
    r = r[np.lexsort((r[:, 2], r[:, 1], r[:, 0]))]
    return hashlib.sha256(np.ascontiguousarray(r).tobytes()).hexdigest()


def mesh_stats(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """bbox min (3), bbox max (3), vertex mean (3), surface area, signed volume (the fixture's 11 stats)."""
    v = v.astype(np.float64)
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1).sum()
    volume = np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0
    return np.concatenate([v.min(0), v.max(0), v.mean(0), [area, volume]])


def grid_of(fx, name: str):
    scales = torch.from_numpy(fx[f"{name}_scaling_log"]).exp()
    rot = torch.from_numpy(fx[f"{name}_rotation_raw"])
    opac = torch.sigmoid(torch.from_numpy(fx[f"{name}_opacity_logit"]))[:, 0]
    cov = covariances_from_scales_rotations(scales, rot)
    return density_grid_from_tensors(torch.from_numpy(fx[f"{name}_xyz"]), cov, opac,
                                     resolution=int(fx["resolution"]), num_blocks=int(fx["num_blocks"]))


@pytest.mark.parametrize("name, atol", [("round", 1e-5), ("disc", 1e-4)])
def test_density_grid_and_marching_cubes_match(fx, name, atol):
    grid, centre, scale = grid_of(fx, name)
    torch.testing.assert_close(centre, torch.from_numpy(fx[f"{name}_center"]), atol=0, rtol=0)
    assert scale == pytest.approx(float(fx[f"{name}_scale"]), rel=1e-12)
    ref = torch.from_numpy(fx[f"{name}_grid"])
    assert float((grid - ref).abs().max()) < atol
    import mcubes

    v, f = mcubes.marching_cubes(grid.numpy(), float(fx["density_thresh"]))
    assert [len(v), len(f)] == fx[f"{name}_mc_counts"].tolist()
    assert float(v.sum()) == pytest.approx(float(fx[f"{name}_mc_vertex_sum"]), rel=1e-6)
    # our world-space wrapper is the official mapping v / (res - 1) * 2 - 1, / scale + centre
    vw, fw = marching_cubes(grid, centre, scale, float(fx["density_thresh"]))
    np.testing.assert_array_equal(fw, f)
    expected = (v / (grid.shape[0] - 1) * 2 - 1) / scale + centre.numpy().astype(np.float64)
    np.testing.assert_allclose(vw, expected, atol=1e-6)


CLEAN_OFFICIAL_SURFACE = """
import json, sys
import mcubes, numpy as np
from cg_lightning.mesh.cleanup import clean_mesh
fx = np.load(sys.argv[1])
res = int(fx["resolution"])
v, f = mcubes.marching_cubes(fx["round_grid"], float(fx["density_thresh"]))
v = (v / (res - 1) * 2 - 1) / float(fx["round_scale"]) + fx["round_center"]
cv, cf = clean_mesh(v, f, remesh=True, remesh_size=0.015, max_faces=0)
np.savez(sys.argv[2], v=cv, f=cf)
"""


def test_clean_of_official_surface_matches(fx, tmp_path):
    """``clean_mesh`` of the official marching-cubes surface = the official ``extract_mesh`` result: counts, vertex
    hash and stats. (Run on our own grid, the 4.5e-6 grid differences move MC vertices by ~1e-7 and isotropic
    remeshing amplifies that into a different tessellation, 22310 vs 22297 vertices: no float32 reimplementation
    of the grid can make the remeshed mesh bit-identical, so the fixture's grid is the input here.)

    pymeshlab's isotropic remeshing of this surface depends on the heap layout of the process that calls it, not
    on our code: with byte-identical binaries and input it gives 22297 vertices (the fixture, vhash4 identical) in
    one checkout and 22304 in another, deterministically per checkout path, and 22305 after other tests in the
    same process. So it runs in a fresh process, and the remeshed result is compared by what is layout-independent:
    counts within 0.1 %, bounding box exact, vertex mean, area and volume to 1e-4 (observed worst 8.6e-5). The
    exact vertex hash is checked where remeshing is not involved (test_clean_mesh_fixed_mesh_matches)."""
    import subprocess
    import sys

    out = tmp_path / "clean.npz"
    subprocess.run([sys.executable, "-c", CLEAN_OFFICIAL_SURFACE, str(GOLDEN / "extract.npz"), str(out)], check=True)
    res = np.load(out)
    cv, cf = res["v"], res["f"]
    expected_counts = fx["round_extract_mesh_counts"]
    np.testing.assert_allclose([len(cv), len(cf)], expected_counts, rtol=1e-3)
    stats, expected = mesh_stats(cv, cf), fx["round_extract_mesh_stats"]
    np.testing.assert_allclose(stats[:6], expected[:6], atol=1e-9)   # bounding box
    np.testing.assert_allclose(stats[6:], expected[6:], atol=1e-4)   # vertex mean, area, volume


def test_extract_disc_set_fails_like_official(fx):
    """Official: cleaning removes every component of the thin-disc surface (pymeshlab then raises); ours raises
    a clear EmptyMeshError instead."""
    assert "Any Faces" in str(fx["disc_extract_mesh_error"])
    grid, centre, scale = grid_of(fx, "disc")
    v, f = marching_cubes(grid, centre, scale, float(fx["density_thresh"]))
    with pytest.raises(EmptyMeshError):
        clean_mesh(v, f, remesh=True, remesh_size=0.015)


@pytest.mark.parametrize("tag, kwargs", [
    ("clean_extractargs", dict(remesh=True, remesh_size=0.015, max_faces=0)),
    ("clean_noremesh", dict(remesh=False, max_faces=0)),
    ("decimate_clean_noremesh_500", dict(remesh=False, max_faces=500)),
])
def test_clean_mesh_fixed_mesh_matches(fx, tag, kwargs):
    v, f = clean_mesh(fx["mesh_in_v"], fx["mesh_in_f"], **kwargs)
    assert [len(v), len(f)] == fx[f"{tag}_counts"].tolist()
    assert vhash4(v) == str(fx[f"{tag}_vhash4"])
    np.testing.assert_allclose(mesh_stats(v, f), fx[f"{tag}_stats"], atol=1e-7)
    if f"{tag}_f" in fx:  # full arrays are stored for small results: same vertices and faces, same order
        np.testing.assert_allclose(v, fx[f"{tag}_v"], atol=1e-6)
        np.testing.assert_array_equal(f, fx[f"{tag}_f"])
