"""make_case: any asset -> a ground-truth case (normalised textured model.glb + reference view), odd meshes included."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cg_lightning.cameras import orbit
from cg_lightning.mesh.mesh import Mesh
from cg_lightning.objects.make_case import TARGET_RADIUS, CaseError, main, make_case, procedural_colours
from cg_lightning.render.mesh import TorchMeshRasterizer, render_mesh

trimesh = pytest.importorskip("trimesh")
DATA = Path(__file__).resolve().parents[1] / "experiments" / "data"
TEX = 128  # small textures keep the tests fast


def _check_case(folder: Path, name: str) -> Mesh:
    mesh = Mesh.load(folder / "model.glb")
    radius = float(mesh.v.norm(dim=1).max())
    assert radius == pytest.approx(TARGET_RADIUS, abs=1e-4)
    lo, hi = mesh.bounds()
    assert torch.allclose((lo + hi) / 2, torch.zeros(3), atol=1e-4)
    assert mesh.vt is not None and mesh.albedo is not None
    from PIL import Image

    rgba = np.asarray(Image.open(folder / f"{name}_rgba.png"))
    assert rgba.shape == (256, 256, 4) and rgba[..., 3].max() == 255 and rgba[0, 0, 3] == 0
    assert json.loads((folder / "case.json").read_text())["name"] == name
    return mesh


def test_vertex_colours_survive(tmp_path):
    """A red/blue vertex-coloured box: the baked texture shows the same colours where the vertices are."""
    box = trimesh.creation.box((1.0, 1.0, 1.0))
    red_side = box.vertices[:, 0] > 0
    box.visual.vertex_colors = np.where(red_side[:, None], [255, 0, 0, 255], [0, 0, 255, 255]).astype(np.uint8)
    box.export(tmp_path / "vc.ply")
    info = make_case(tmp_path / "vc.ply", tmp_path / "case", texture_size=TEX)
    assert info.colour_source == "vertex_colours" and info.name == "case"
    mesh = _check_case(tmp_path / "case", "case")
    # the +x face seen head-on (azimuth 90) is pure red, the -x face (azimuth -90) pure blue
    rast = TorchMeshRasterizer()
    right = render_mesh(mesh, orbit(0, 90, 2, 49.1, 64, 64), rast, 1.0, filter_mode="linear").image[:, 32, 32]
    left = render_mesh(mesh, orbit(0, -90, 2, 49.1, 64, 64), rast, 1.0, filter_mode="linear").image[:, 32, 32]
    torch.testing.assert_close(right, torch.tensor([1.0, 0.0, 0.0]), atol=0.02, rtol=0)
    torch.testing.assert_close(left, torch.tensor([0.0, 0.0, 1.0]), atol=0.02, rtol=0)


def test_textured_glb_round_trips_and_renders_like_the_original(tmp_path):
    """The bundled torus (already normalised) through make_case: same reference view as the bundled one."""
    info = make_case(DATA / "torus" / "model.glb", tmp_path / "torus", texture_size=TEX)
    assert info.colour_source == "texture" and info.dropped_degenerate_faces == 0
    assert info.scale == pytest.approx(TARGET_RADIUS / 0.59, rel=1e-3)  # the torus reaches 0.59
    _check_case(tmp_path / "torus", "torus")
    from PIL import Image

    ours = np.asarray(Image.open(tmp_path / "torus" / "torus_rgba.png")).astype(float)
    bundled = np.asarray(Image.open(DATA / "torus" / "torus_rgba.png")).astype(float)
    assert (ours[..., 3] > 0).sum() > (bundled[..., 3] > 0).sum()  # scaled up slightly: 0.59 -> 0.6
    assert np.abs(ours[..., 3] - bundled[..., 3]).mean() < 8  # but the same object in the same place


def test_obj_without_uvs_gets_a_deterministic_procedural_texture(tmp_path):
    torus = trimesh.creation.torus(0.5, 0.15, major_sections=24, minor_sections=8)
    torus.export(tmp_path / "plain.obj")
    a = make_case(tmp_path / "plain.obj", tmp_path / "a", texture_size=TEX, elevation_deg=-20)
    make_case(tmp_path / "plain.obj", tmp_path / "b", texture_size=TEX, elevation_deg=-20)
    assert a.colour_source == "procedural" and a.elevation_deg == -20
    assert (tmp_path / "a" / "a_rgba.png").read_bytes() == (tmp_path / "b" / "b_rgba.png").read_bytes()
    albedo = _check_case(tmp_path / "a", "a").albedo
    assert float(albedo.std(dim=(0, 1)).mean()) > 0.1  # colourful, not one flat colour
    c = procedural_colours(np.array([[0.0, 0.0, 0.0], [0.2, 0.0, 0.0], [0.01, 0.01, 0.01]]))
    assert np.allclose(c[0], c[2]) and not np.allclose(c[0], c[1])  # same cell / next cell


def test_odd_meshes_several_parts_non_manifold_degenerate(tmp_path):
    a = trimesh.creation.box((0.5, 0.5, 0.5))
    b = trimesh.creation.icosphere(1, 0.3)
    b.apply_translation((1.0, 0.0, 0.0))
    v = np.concatenate([a.vertices, b.vertices])
    f = np.concatenate([a.faces, b.faces + len(a.vertices)])
    # a fin sharing one edge of the box with two existing faces (non-manifold edge) and two degenerate faces
    e0, e1 = a.faces[0][:2]
    v = np.concatenate([v, [[0.0, 2.0, 0.0]]])
    f = np.concatenate([f, [[e0, e1, len(v) - 1], [0, 0, 1], [0, 1, 1]]])
    trimesh.Trimesh(v, f, process=False).export(tmp_path / "odd.ply")
    info = make_case(tmp_path / "odd.ply", tmp_path / "odd", texture_size=TEX)
    assert info.dropped_degenerate_faces == 2 and info.faces_out >= len(f) - 2
    _check_case(tmp_path / "odd", "odd")


def test_large_untextured_mesh_is_decimated(tmp_path):
    sphere = trimesh.creation.uv_sphere(0.5, count=[100, 100])  # ~20k faces
    sphere.export(tmp_path / "big.ply")
    info = make_case(tmp_path / "big.ply", tmp_path / "big", texture_size=TEX, max_faces=3000)
    assert info.decimated and info.faces_in > 15000 and info.faces_out <= 3100
    _check_case(tmp_path / "big", "big")


def test_obj_with_mtl_and_texture_keeps_its_texture(tmp_path):
    """An .obj + .mtl + .png as a 3D tool writes them: the texture is kept (not re-baked); without its image file the
    case still builds, with the procedural texture and a note saying why."""
    from PIL import Image

    box = trimesh.creation.box((1.0, 0.6, 0.4))
    left = box.vertices[:, 0] < 0  # the -x half samples the red left half of the image, +x the green right half
    uv = np.stack([np.where(left, 0.25, 0.75), np.full(len(box.vertices), 0.5)], 1)
    image = np.zeros((16, 16, 3), np.uint8)
    image[:, :8] = (220, 20, 20)
    image[:, 8:] = (20, 200, 20)
    box.visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(image))
    (tmp_path / "src").mkdir()
    box.export(tmp_path / "src" / "tex.obj")
    assert sorted(p.suffix for p in (tmp_path / "src").iterdir()) == [".mtl", ".obj", ".png"]
    info = make_case(tmp_path / "src" / "tex.obj", tmp_path / "tex", texture_size=TEX)
    assert info.colour_source == "texture" and info.notes == []
    mesh = _check_case(tmp_path / "tex", "tex")
    rast = TorchMeshRasterizer()
    right = render_mesh(mesh, orbit(0, 90, 2, 49.1, 64, 64), rast, 1.0, filter_mode="linear").image[:, 32, 32]
    left_px = render_mesh(mesh, orbit(0, -90, 2, 49.1, 64, 64), rast, 1.0, filter_mode="linear").image[:, 32, 32]
    torch.testing.assert_close(right, torch.tensor([20, 200, 20]) / 255.0, atol=0.02, rtol=0)
    torch.testing.assert_close(left_px, torch.tensor([220, 20, 20]) / 255.0, atol=0.02, rtol=0)
    for png in (tmp_path / "src").glob("*.png"):
        png.unlink()
    info = make_case(tmp_path / "src" / "tex.obj", tmp_path / "notex", texture_size=TEX)
    assert info.colour_source == "procedural" and "no texture image could be loaded" in info.notes[0]
    assert json.loads((tmp_path / "notex" / "case.json").read_text())["notes"] == info.notes


def test_glb_scene_with_node_transforms_face_colours_and_other_formats(tmp_path):
    """A .glb scene of two vertex-coloured parts placed by node transforms, a face-coloured .ply, an .stl and an
    .off: each becomes a case with the colour source it has."""
    scene = trimesh.Scene()
    ball = trimesh.creation.icosphere(1, 0.3)
    ball.visual.vertex_colors = [255, 0, 0, 255]
    rod = trimesh.creation.cylinder(0.1, 1.0)
    rod.visual.vertex_colors = [0, 255, 0, 255]
    scene.add_geometry(ball, transform=trimesh.transformations.translation_matrix([0.8, 0, 0]))
    scene.add_geometry(rod, transform=trimesh.transformations.translation_matrix([-0.8, 0, 0]))
    scene.export(tmp_path / "scene.glb")
    info = make_case(tmp_path / "scene.glb", tmp_path / "scene", texture_size=TEX)
    assert info.colour_source == "vertex_colours" and info.faces_out == len(ball.faces) + len(rod.faces)
    mesh = _check_case(tmp_path / "scene", "scene")
    front = render_mesh(mesh, orbit(0, 0, 2, 49.1, 64, 64), TorchMeshRasterizer(), 1.0, filter_mode="linear").image
    # the transforms were applied: the red ball right of the centre (+x), the green rod left of it
    assert front[0, 32, 48] > 0.9 > 0.1 > front[1, 32, 48] and front[1, 32, 16] > 0.9 > 0.1 > front[0, 32, 16]
    torus = trimesh.creation.torus(0.5, 0.2, major_sections=12, minor_sections=6)
    torus.visual.face_colors = np.tile([[10, 20, 250, 255], [250, 240, 10, 255]], (len(torus.faces) // 2, 1))
    torus.export(tmp_path / "faces.ply")
    assert make_case(tmp_path / "faces.ply", tmp_path / "faces", texture_size=TEX).colour_source == "face_colours"
    trimesh.creation.capsule(0.8, 0.3).export(tmp_path / "capsule.stl")
    trimesh.creation.cone(0.4, 1.0).export(tmp_path / "cone.off")
    for name in ("capsule.stl", "cone.off"):
        out = tmp_path / name.split(".")[0]
        assert make_case(tmp_path / name, out, texture_size=TEX).colour_source == "procedural"
        _check_case(out, out.name)


def _segfault() -> None:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGSEGV)  # what xatlas does to the process on some large closed meshes


def test_a_crash_in_native_code_becomes_a_clear_error():
    """xatlas segfaults on some large closed meshes: the unwrap runs in a child process whose death is reported."""
    from cg_lightning.objects.make_case import run_isolated

    assert run_isolated(divmod, 7, 2, what="x", advice="y") == (3, 1)
    with pytest.raises(CaseError, match=r"the UV unwrap .* failed \(the process died with exit code -11\); retry"):
        run_isolated(_segfault, what="the UV unwrap (xatlas) of 9 faces", advice="retry")
    with pytest.raises(CaseError, match="ZeroDivisionError"):
        run_isolated(divmod, 1, 0, what="x", advice="y")


@pytest.mark.slow
def test_500k_faces_untextured_works(tmp_path):
    sphere = trimesh.creation.uv_sphere(0.5, count=[500, 500])  # ~500k faces
    sphere.export(tmp_path / "huge.ply")
    info = make_case(tmp_path / "huge.ply", tmp_path / "huge", texture_size=256)
    assert info.faces_in >= 490_000 and info.decimated
    _check_case(tmp_path / "huge", "huge")


def test_clear_errors_and_nothing_written(tmp_path, capsys):
    (tmp_path / "empty.obj").write_text("# nothing\n")
    trimesh.PointCloud(np.random.default_rng(0).random((50, 3))).export(tmp_path / "cloud.ply")
    flat = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [2, 0, 0]], [[0, 1, 2]], process=False)
    flat.export(tmp_path / "flat.ply")
    (tmp_path / "garbage.glb").write_bytes(b"not a glb at all")
    (tmp_path / "zero.ply").write_bytes(b"")
    (tmp_path / "model.fbx").write_bytes(b"Kaydara FBX Binary  \x00")
    good = trimesh.creation.box()
    good.export(tmp_path / "good.glb")
    (tmp_path / "truncated.glb").write_bytes((tmp_path / "good.glb").read_bytes()[:200])
    (tmp_path / "nan.obj").write_text("v nan 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 2 3 4\n")
    for bad, match in [("missing.obj", "does not exist"), ("empty.obj", "no triangles|Cannot read|cannot read"),
                       ("cloud.ply", "no triangles"), ("flat.ply", "degenerate"), ("garbage.glb", "cannot read"),
                       ("zero.ply", "cannot read"), ("model.fbx", "cannot read .*fbx"),
                       ("truncated.glb", "cannot read"), ("nan.obj", "non-finite"), (".", "not a file")]:
        with pytest.raises(CaseError, match=match):
            make_case(tmp_path / bad, tmp_path / "out", texture_size=TEX)
    assert not (tmp_path / "out").exists()
    # textured meshes above the face limit are refused, not silently re-textured
    with pytest.raises(CaseError, match="max-faces"):
        make_case(DATA / "torus" / "model.glb", tmp_path / "out", max_faces=100)
    with pytest.raises(CaseError, match="elevation"):
        make_case(DATA / "torus" / "model.glb", tmp_path / "out", elevation_deg=95)
    # the command line prints one message and exits 2
    assert main([str(tmp_path / "cloud.ply"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: make_case:") and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_bundled_objects_and_assets_are_cases():
    """Every folder in experiments/data is a case: a normalised model.glb and its reference image."""
    for folder in sorted(p for p in DATA.iterdir() if p.is_dir()):
        if (folder / "case.json").exists():  # made by make_case (the procedural ones predate it)
            _check_case(folder, folder.name)
        assert (folder / "model.glb").is_file() and (folder / f"{folder.name}_rgba.png").is_file()
