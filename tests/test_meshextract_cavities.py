"""mesh.fill_cavities: enclosed low-density regions make no inner shell; open concavities are kept."""

from __future__ import annotations

import numpy as np
import torch

from cg_lightning.mesh.extract import fill_enclosed_cavities, marching_cubes


def _shell_grid(res: int = 32, open_top: bool = False) -> np.ndarray:
    """Density > 1 in a spherical shell 0.4 < r < 0.8 (optionally with a hole through the top), 0 elsewhere."""
    xs = np.linspace(-1, 1, res)
    x, y, z = np.meshgrid(xs, xs, xs, indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    vol = ((r > 0.4) & (r < 0.8)).astype(np.float32) * 2.0
    if open_top:
        vol[(np.abs(x) < 0.25) & (np.abs(y) < 0.25) & (z > 0)] = 0.0
    return vol


def _components(v: np.ndarray, f: np.ndarray) -> int:
    import trimesh

    mesh = trimesh.Trimesh(v, f, process=True)
    return len(mesh.split(only_watertight=False))


def test_enclosed_cavity_is_filled_and_makes_no_inner_shell():
    vol = _shell_grid()
    filled = fill_enclosed_cavities(vol, 1.0)
    assert (filled >= 1.0).sum() > (vol >= 1.0).sum()  # the inside is now solid
    assert filled[16, 16, 16] > 1.0 and vol[16, 16, 16] == 0.0
    grid, centre = torch.from_numpy(vol), torch.zeros(3)
    v0, f0 = marching_cubes(grid, centre, 1.0, 1.0)
    v1, f1 = marching_cubes(grid, centre, 1.0, 1.0, fill_cavities=True)
    assert _components(v0, f0) == 2  # outer surface + the shell around the hollow inside
    assert _components(v1, f1) == 1
    assert np.linalg.norm(v1, axis=1).min() > 0.7  # only the outer surface is left


def test_cavity_open_to_the_outside_is_kept():
    vol = _shell_grid(open_top=True)
    np.testing.assert_array_equal(fill_enclosed_cavities(vol, 1.0), vol)
