"""OBJ/GLB exports: file layout, UV convention, trimesh round trips, Khronos glTF validator (npm gltf-validator)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from cg_lightning.mesh import Mesh
from cg_lightning.mesh.export import glb_bytes, write_glb, write_obj

ROOT = Path(__file__).resolve().parents[1]
VALIDATOR_VERSION = "2.0.0-dev.3.10"
VALIDATOR_DIR = Path(os.environ.get("CG_CACHE", Path.home() / ".cache" / "cg_lightning")) / "gltf-validator"

VALIDATE_JS = """
const fs = require('fs');
const validator = require(process.argv[2]);
(async () => {
  const out = {};
  for (const file of process.argv.slice(3)) {
    const report = await validator.validateBytes(new Uint8Array(fs.readFileSync(file)));
    out[file] = report.issues;
  }
  console.log(JSON.stringify(out));
})().catch((err) => { console.error(err); process.exit(2); });
"""


def textured_mesh(tex_hw: tuple[int, int] = (24, 40)) -> Mesh:
    s = trimesh.creation.icosphere(2, radius=0.5)
    v = torch.tensor(s.vertices, dtype=torch.float32)
    vt = torch.stack([(v[:, 0] + 0.5) * 0.9, (0.5 - v[:, 1]) * 0.8], 1)
    g = torch.Generator().manual_seed(0)
    return Mesh(v=v, f=torch.tensor(s.faces), vt=vt, albedo=torch.rand(*tex_hw, 3, generator=g)).auto_normals()


def test_write_obj_layout_and_uv_convention(tmp_path):
    mesh = textured_mesh()
    write_obj(mesh, tmp_path / "model.obj")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.mtl", "model.obj", "model_albedo.png"]
    lines = (tmp_path / "model.obj").read_text().splitlines()
    assert "mtllib model.mtl" in lines and "usemtl defaultMat" in lines
    vt = np.array([[float(x) for x in ln.split()[1:]] for ln in lines if ln.startswith("vt ")])
    np.testing.assert_allclose(vt[:, 0], mesh.vt[:, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(vt[:, 1], 1 - mesh.vt[:, 1].numpy(), atol=1e-6)  # OBJ stores 1 - v
    faces = [ln for ln in lines if ln.startswith("f ")]
    assert len(faces) == mesh.num_faces
    a, b, c = (int(x) for x in faces[0].split()[1].split("/"))
    assert a == b == c == int(mesh.f[0, 0]) + 1
    assert "map_Kd model_albedo.png" in (tmp_path / "model.mtl").read_text()
    png = np.asarray(Image.open(tmp_path / "model_albedo.png"))
    assert png.shape == (24, 40, 3)
    np.testing.assert_array_equal(png, (mesh.albedo.numpy() * 255).round().astype(np.uint8))


def test_trimesh_roundtrip_obj_and_glb(tmp_path):
    mesh = textured_mesh()
    write_obj(mesh, tmp_path / "a.obj")
    write_glb(mesh, tmp_path / "a.glb")
    for name in ("a.obj", "a.glb"):
        loaded = trimesh.load(tmp_path / name, force="mesh", process=False)
        assert len(loaded.vertices) == mesh.num_vertices and len(loaded.faces) == mesh.num_faces
        mat = loaded.visual.material
        image = getattr(mat, "baseColorTexture", None) or getattr(mat, "image", None)
        assert image is not None and image.size == (40, 24)
    glb = trimesh.load(tmp_path / "a.glb", force="mesh", process=False)
    # glTF keeps v (top-left origin); trimesh converts it to its bottom-left convention on load
    np.testing.assert_allclose(glb.visual.uv[:, 1], 1 - mesh.vt[:, 1].numpy(), atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_untextured_exports(tmp_path):
    s = trimesh.creation.box()
    mesh = Mesh(torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces))
    write_obj(mesh, tmp_path / "plain.obj")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.obj"]
    faces = [ln for ln in (tmp_path / "plain.obj").read_text().splitlines() if ln.startswith("f ")]
    assert len(faces) == 12 and all(re.fullmatch(r"f (\d+)//\1 (\d+)//\2 (\d+)//\3", ln) for ln in faces)
    back = Mesh.load(write_glb(mesh, tmp_path / "plain.glb"))
    assert back.num_faces == 12 and back.albedo is None


def gltf_validator() -> tuple[str, Path]:
    """(node, module dir) of the Khronos validator, installed once into the cache with npm."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: cannot run the Khronos glTF validator")
    module = VALIDATOR_DIR / "node_modules" / "gltf-validator"
    if not (module / "package.json").is_file():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: cannot fetch the Khronos glTF validator (npm gltf-validator)")
        VALIDATOR_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "install", "--prefix", str(VALIDATOR_DIR), "--no-audit", "--no-fund",
                        f"gltf-validator@{VALIDATOR_VERSION}"], check=True, capture_output=True, timeout=300)
    return node, module


def test_glb_passes_khronos_validator(tmp_path):
    node, module = gltf_validator()
    files = [write_glb(textured_mesh(), tmp_path / "textured.glb"),
             write_glb(textured_mesh((16, 32)), tmp_path / "pow2.glb")]
    s = trimesh.creation.box()
    files.append(write_glb(Mesh(torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces)),
                           tmp_path / "plain.glb"))
    files += sorted((ROOT / "experiments" / "data").glob("*/model.glb"))
    assert len(files) >= 6
    script = tmp_path / "validate.js"
    script.write_text(VALIDATE_JS)
    res = subprocess.run([node, str(script), str(module), *map(str, files)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    reports = json.loads(res.stdout)
    for file in files:
        issues = reports[str(file)]
        assert issues["numErrors"] == 0, (file, issues["messages"])
        assert issues["numWarnings"] == 0, (file, issues["messages"])


def test_glb_bytes_are_deterministic():
    assert glb_bytes(textured_mesh()) == glb_bytes(textured_mesh())
