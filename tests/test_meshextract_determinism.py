"""Mesh extraction gives bit-identical results whatever the number of CPU threads (issue 12).

The density grid (blocked matmuls), marching cubes, the pymeshlab cleanup and the xatlas unwrap are run with
``torch.set_num_threads(1)`` and ``(2)`` and compared exactly. (A job's mesh can still differ between thread
counts when its stage-1 Gaussians differ: that comes from training, not from extraction.)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from cg_lightning.mesh.cleanup import clean_mesh
from cg_lightning.mesh.extract import density_grid, marching_cubes
from cg_lightning.mesh.uv import unwrap_uv_arrays

BENCH_DIR = str(Path(__file__).resolve().parents[1] / "experiments" / "benchmarks")


def digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def extract_all(model) -> dict[str, str]:
    grid, centre, scale = density_grid(model, resolution=40, num_blocks=4)
    v, f = marching_cubes(grid, centre, scale, 1.0)
    cv, cf = clean_mesh(v, f, remesh=True, remesh_size=0.06, max_faces=2000)
    vmap, uf, vt = unwrap_uv_arrays(cv, cf)
    return {"grid": digest(grid.numpy()), "mc": digest(v, f), "clean": digest(cv, cf), "uv": digest(vmap, uf, vt)}


def test_extraction_identical_with_one_and_two_threads(monkeypatch):
    monkeypatch.syspath_prepend(BENCH_DIR)
    from bench_mesh_extract import synthetic_object  # trained-looking Gaussians

    torch.manual_seed(0)
    model = synthetic_object(800)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(extract_all(model))
    finally:
        torch.set_num_threads(before)
    assert results[0] == results[1], results
