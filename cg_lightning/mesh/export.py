"""Write a textured :class:`Mesh` as OBJ (+ MTL + albedo PNG) or as a self-contained binary glTF (.glb).

Formats follow DreamGaussian's writers (reference §2.13) with two deliberate additions to the GLB: NORMAL is
included, and the file is checked against the Khronos glTF validator in the test suite. Every file is written
atomically, and the OBJ is renamed into place last so it never references a missing MTL/PNG.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cg_lightning.mesh.mesh import Mesh, normalize_or_default
from cg_lightning.utils.atomic import atomic_open, write_bytes, write_text

# glTF enums
_FLOAT, _UINT = 5126, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_LINEAR, _LINEAR_MIPMAP_LINEAR, _REPEAT = 9729, 9987, 10497
UNTEXTURED_COLOR = (0.5, 0.5, 0.5)


def albedo_to_uint8(albedo: Tensor) -> np.ndarray:
    """(Ht,Wt,3) float [0,1] -> uint8 image (rounded, clamped)."""
    return (albedo.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an (H,W,3|4) uint8 array as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _normals(mesh: Mesh) -> Tensor:
    vn = mesh.vn if mesh.vn is not None else mesh.auto_normals().vn
    return normalize_or_default(vn.detach().float())


def _rows(fmt: str, arr: np.ndarray) -> str:
    if len(arr) == 0:
        return ""
    buf = io.StringIO()
    np.savetxt(buf, arr, fmt=fmt)
    return buf.getvalue()


def write_obj(mesh: Mesh, path: str | os.PathLike) -> Path:
    """Write ``path`` (.obj) and, when the mesh has a texture, ``<stem>.mtl`` and ``<stem>_albedo.png`` beside it.

    UVs are written as ``u 1-v`` (OBJ's origin is bottom-left); faces as ``f v/vt/vn`` with one shared index.
    """
    path = Path(path)
    stem = path.stem
    v = mesh.v.detach().float().cpu().numpy()
    f = mesh.f.detach().cpu().numpy().astype(np.int64) + 1
    vn = _normals(mesh).cpu().numpy()
    textured = mesh.albedo is not None and mesh.vt is not None
    has_vt = mesh.vt is not None
    header = [f"# cg_lightning mesh: {len(v)} vertices, {len(f)} faces"]
    if textured:
        mtl_name, png_name = f"{stem}.mtl", f"{stem}_albedo.png"
        write_bytes(path.with_name(png_name), png_bytes(albedo_to_uint8(mesh.albedo)))
        write_text(path.with_name(mtl_name), "\n".join([
            "newmtl defaultMat", "Ka 1.000000 1.000000 1.000000", "Kd 1.000000 1.000000 1.000000",
            "Ks 0.000000 0.000000 0.000000", "Tr 1.000000", "illum 1", "Ns 0.000000", f"map_Kd {png_name}", ""]))
        header.append(f"mtllib {mtl_name}")
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(header) + "\n")
        fh.write(_rows("v %.6f %.6f %.6f", v))
        if has_vt:
            vt = mesh.vt.detach().float().cpu().numpy()
            fh.write(_rows("vt %.6f %.6f", np.stack([vt[:, 0], 1.0 - vt[:, 1]], 1)))
        fh.write(_rows("vn %.6f %.6f %.6f", vn))
        if textured:
            fh.write("usemtl defaultMat\n")
        if has_vt:
            fh.write(_rows("f %d/%d/%d %d/%d/%d %d/%d/%d", np.repeat(f, 3, axis=1)))
        else:
            fh.write(_rows("f %d//%d %d//%d %d//%d", np.repeat(f, 2, axis=1)))
    return path


def glb_bytes(mesh: Mesh) -> bytes:
    """The mesh as a GLB: POSITION/NORMAL/TEXCOORD_0 float32, uint32 indices, embedded PNG base colour,
    PBR metallic 0 / roughness 1, double-sided (DreamGaussian's material)."""
    import pygltflib as gl

    v = mesh.v.detach().float().cpu().numpy().astype(np.float32)
    f = mesh.f.detach().cpu().numpy().astype(np.uint32)
    vn = _normals(mesh).cpu().numpy().astype(np.float32)
    textured = mesh.albedo is not None and mesh.vt is not None
    blob = bytearray()
    views: list = []
    accessors: list = []

    def add_view(data: bytes, target: int | None) -> int:
        while len(blob) % 4:
            blob.append(0)
        views.append(gl.BufferView(buffer=0, byteOffset=len(blob), byteLength=len(data), target=target))
        blob.extend(data)
        return len(views) - 1

    def add_accessor(arr: np.ndarray, kind: str, ctype: int, target: int, bounds: bool = False) -> int:
        view = add_view(arr.tobytes(), target)
        acc = gl.Accessor(bufferView=view, componentType=ctype, count=int(arr.shape[0]), type=kind)
        if bounds:
            acc.min = arr.min(axis=0).astype(float).tolist()
            acc.max = arr.max(axis=0).astype(float).tolist()
        accessors.append(acc)
        return len(accessors) - 1

    indices = add_accessor(f.reshape(-1), gl.SCALAR, _UINT, _ELEMENT_ARRAY_BUFFER, bounds=False)
    accessors[indices].min, accessors[indices].max = [int(f.min())], [int(f.max())]
    attributes = gl.Attributes(POSITION=add_accessor(v, gl.VEC3, _FLOAT, _ARRAY_BUFFER, bounds=True),
                               NORMAL=add_accessor(vn, gl.VEC3, _FLOAT, _ARRAY_BUFFER))
    pbr = gl.PbrMetallicRoughness(metallicFactor=0.0, roughnessFactor=1.0)
    images, textures, samplers = [], [], []
    if textured:
        vt = mesh.vt.detach().float().cpu().numpy().astype(np.float32)  # glTF's uv origin is top-left: v kept
        attributes.TEXCOORD_0 = add_accessor(vt, gl.VEC2, _FLOAT, _ARRAY_BUFFER)
        image_view = add_view(png_bytes(albedo_to_uint8(mesh.albedo)), None)
        images = [gl.Image(bufferView=image_view, mimeType="image/png")]
        samplers = [gl.Sampler(magFilter=_LINEAR, minFilter=_LINEAR_MIPMAP_LINEAR, wrapS=_REPEAT, wrapT=_REPEAT)]
        textures = [gl.Texture(sampler=0, source=0)]
        pbr.baseColorTexture = gl.TextureInfo(index=0)
    else:
        pbr.baseColorFactor = [*UNTEXTURED_COLOR, 1.0]
    while len(blob) % 4:
        blob.append(0)
    gltf = gl.GLTF2(
        asset=gl.Asset(version="2.0", generator="cg_lightning"),
        scene=0,
        scenes=[gl.Scene(nodes=[0])],
        nodes=[gl.Node(mesh=0)],
        meshes=[gl.Mesh(primitives=[gl.Primitive(attributes=attributes, indices=indices, material=0, mode=4)])],
        materials=[gl.Material(pbrMetallicRoughness=pbr, doubleSided=True, alphaMode=gl.OPAQUE)],
        textures=textures,
        images=images,
        samplers=samplers,
        accessors=accessors,
        bufferViews=views,
        buffers=[gl.Buffer(byteLength=len(blob))],
    )
    gltf.set_binary_blob(bytes(blob))
    data = gltf.save_to_bytes()
    return b"".join(data) if isinstance(data, list | tuple) else bytes(data)


def write_glb(mesh: Mesh, path: str | os.PathLike) -> Path:
    """Write the mesh as a self-contained ``.glb`` (atomic)."""
    path = Path(path)
    write_bytes(path, glb_bytes(mesh))
    return path
