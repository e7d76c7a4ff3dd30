"""Golden: texel splatting and the per-view bake accumulation against DG ``grid_put.py`` and CG ``save_model``.

Fixture: tests/golden/grid_put.npz. Same float32 operations in the same order (four corner passes, the same
mip loop and bilinear upsampling), so sums, counts and the accumulated albedo must be bit-identical. The fixture
covers the accumulation up to ``albedo /= cnt``; the dilation inpainting that follows is tested in
tests/test_meshextract_bake.py (no official output of it was recorded).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cg_lightning.mesh.bake import grid_put_linear, grid_put_mipmap, texture_from_views

GOLDEN = Path(__file__).parent / "golden"
ATOL = 0.0


@pytest.fixture(scope="module")
def fx():
    return dict(np.load(GOLDEN / "grid_put.npz"))


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


@pytest.mark.parametrize("k", [0, 1, 2])
def test_linear_grid_put(fx, k):
    h, w = fx[f"lin{k}_HW"].tolist()
    s, c = grid_put_linear(t(fx[f"lin{k}_coords"]), t(fx[f"lin{k}_values"]), h, w)
    np.testing.assert_allclose(s.numpy(), fx[f"lin{k}_raw"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(c.numpy(), fx[f"lin{k}_count"][..., 0], atol=ATOL, rtol=0)
    if k == 0:  # the normalised result of return_count=False
        seen = c > 0
        res = torch.where(seen[..., None], s / torch.where(seen, c, 1.0)[..., None], 0.0)
        np.testing.assert_allclose(res.numpy(), fx["lin0_result"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_mipmap_grid_put(fx, k):
    h, w = fx[f"mip{k}_HW"].tolist()
    s, c = grid_put_mipmap(t(fx[f"mip{k}_coords"]), t(fx[f"mip{k}_values"]), h, w, int(fx[f"mip{k}_min_resolution"]))
    np.testing.assert_allclose(s.numpy(), fx[f"mip{k}_raw"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(c.numpy(), fx[f"mip{k}_count"][..., 0], atol=ATOL, rtol=0)


def test_bake_accumulation_first_view_wins(fx):
    size = int(fx["bake_HW"][0])
    assert fx["bake_HW"].tolist() == [size, size]
    samples = [(t(fx[f"bake_view{i}_uvs"]), t(fx[f"bake_view{i}_rgbs"]), torch.ones(len(fx[f"bake_view{i}_uvs"])))
               for i in range(3)]
    colour, seen = texture_from_views(samples, size, int(fx["bake_min_resolution"]), blend="first")
    np.testing.assert_array_equal(seen.numpy(), fx["bake_mask"])
    np.testing.assert_allclose(colour.numpy()[fx["bake_mask"]], fx["bake_albedo"][fx["bake_mask"]], atol=ATOL,
                               rtol=0)
    # unseen texels stay exactly as the official albedo leaves them (zero) until the inpainting
    assert np.all(colour.numpy()[~fx["bake_mask"]] == 0) and np.all(fx["bake_albedo"][~fx["bake_mask"]] == 0)


def test_centred_mapping_option_differs(fx):
    """The named ``texel_mapping="centered"`` option is a real deviation: it must not reproduce the fixture."""
    h, w = fx["mip0_HW"].tolist()
    s, c = grid_put_mipmap(t(fx["mip0_coords"]), t(fx["mip0_values"]), h, w, int(fx["mip0_min_resolution"]),
                           mapping="centered")
    assert float(np.abs(c.numpy() - fx["mip0_count"][..., 0]).max()) > 0.5
