"""Bundled procedural objects: present, small, loadable, and reproducible by the generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cg_lightning.mesh import Mesh
from cg_lightning.mesh.export import glb_bytes
from cg_lightning.objects.procedural import OBJECTS, REFERENCE_VIEW, main, render_reference

DATA = Path(__file__).resolve().parents[1] / "experiments" / "data"


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_bundled_object_is_small_textured_and_matches_generator(name):
    folder = DATA / name
    glb, png = folder / "model.glb", folder / f"{folder.name}_rgba.png"
    assert glb.stat().st_size < 1_000_000 and png.stat().st_size < 1_000_000
    assert glb.read_bytes() == glb_bytes(OBJECTS[name]())  # regenerating gives the same file
    mesh = Mesh.load(glb)
    assert mesh.vt is not None and mesh.albedo is not None and mesh.num_faces > 100
    assert float(mesh.v.norm(dim=-1).max()) < 0.8  # fits the reference view with a margin
    assert float(mesh.albedo.std()) > 0.1  # really textured
    rgba = np.asarray(Image.open(png))
    size = REFERENCE_VIEW["size"]
    assert rgba.shape == (size, size, 4)
    alpha = rgba[..., 3]
    assert alpha[0].max() == 0 and alpha[-1].max() == 0 and alpha[:, 0].max() == 0 and alpha[:, -1].max() == 0
    assert 0.1 < (alpha > 127).mean() < 0.6


@pytest.mark.parametrize("name", ["box", "torus"])
def test_reference_image_is_the_front_view_of_the_mesh(name):
    """A cheap re-render (half size, 2x supersampling) of the stored mesh matches rgba.png downsampled."""
    mesh = Mesh.load(DATA / name / "model.glb")
    half = REFERENCE_VIEW["size"] // 2
    fresh = render_reference(mesh, size=half, ssaa=2).astype(np.float64) / 255
    stored = np.asarray(Image.open(DATA / name / f"{name}_rgba.png")).astype(np.float64) / 255
    stored = stored.reshape(half, 2, half, 2, 4)
    alpha = stored[..., 3].mean(axis=(1, 3))
    premul = (stored[..., :3] * stored[..., 3:]).mean(axis=(1, 3))
    assert np.abs(fresh[..., 3] - alpha).mean() < 0.01
    assert np.abs(fresh[..., :3] * fresh[..., 3:] - premul).mean() < 0.02
    # the wrong pose (e.g. seen from the back) would be far off
    assert np.abs(np.flip(fresh[..., 3], 1) - alpha).mean() > 0.03


@pytest.mark.slow
def test_cli_regenerates_identical_files(tmp_path):
    main(["--out", str(tmp_path), "--only", "torus"])
    for name in ("model.glb", "torus_rgba.png"):
        assert (tmp_path / "torus" / name).read_bytes() == (DATA / "torus" / name).read_bytes()


def test_generator_is_deterministic():
    a, b = OBJECTS["sphere"](), OBJECTS["sphere"]()
    assert torch.equal(a.v, b.v) and torch.equal(a.albedo, b.albedo) and torch.equal(a.f, b.f)
