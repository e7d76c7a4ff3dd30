"""Turn any 3D asset into a ground-truth test case for the oracle priors.

    python -m cg_lightning.objects.make_case MESH --out DIR [--name NAME] [--elevation E]

``MESH`` is a ``.glb`` / ``.gltf`` / ``.obj`` (+ ``.mtl`` and texture) / ``.ply`` / ``.stl`` / ``.off``, with a
texture, vertex (or face) colours, one material colour, or nothing. The case folder gets:

- ``model.glb``: the asset centred (bounding-box centre at the origin) and scaled like the bundled objects (every
  vertex within 0.6 of the centre, the largest exactly at 0.6), with one texture. Vertex/face colours and plain
  material colours are baked into a texture over an xatlas UV layout (``Mesh`` carries textures only); an asset
  without any colour gets a deterministic procedural texture (coloured 3D checker cells), so that appearance
  errors are measurable;
- ``<name>_rgba.png``: the reference view (elevation ``E``, azimuth 0, radius 2, fovy 49.1, 256 px, transparent
  background), i.e. the input image: ``python launch.py +experiment=oracle image=DIR/<name>_rgba.png elevation=E``;
- ``case.json``: where it came from and what was done (scale, faces, colour source, elevation).

Odd meshes: several parts, non-manifold edges and missing UVs work; degenerate (zero-area) faces and unreferenced
vertices are dropped; untextured meshes above ``--max-faces`` are decimated (pymeshlab quadric collapse), textured
ones above it are refused with a clear message; empty files, point clouds and meshes without area are refused. All
files are written only after everything succeeded (atomically).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from cg_lightning.errors import CGError
from cg_lightning.mesh.mesh import Mesh, _texture_of, as_single_trimesh

TARGET_RADIUS = 0.6  # the bundled objects reach 0.58-0.60 from their centre
DEFAULT_MAX_FACES = 50_000  # xatlas: 60k faces of a closed mesh unwrap in ~45 s, 80-100k can crash it
CELL = 0.15  # edge of the procedural texture's 3D checker cells, in normalised units


class CaseError(CGError):
    """The asset cannot be made into a case (the message says why and what to do)."""


@dataclass
class CaseInfo:
    source: str
    name: str
    elevation_deg: float
    colour_source: str  # texture | vertex_colours | face_colours | material_colour | procedural
    faces_in: int
    faces_out: int
    dropped_degenerate_faces: int
    decimated: bool
    scale: float
    centre: list[float]
    notes: list[str] = field(default_factory=list)  # what the user should know (printed by the command line)


# ---------------------------------------------------------------------------------------------- loading
def load_asset(path: str | Path):
    """The asset as one trimesh (scenes flattened with their node transforms), or a :class:`CaseError`."""
    import trimesh

    p = Path(path)
    if not p.is_file():
        raise CaseError(f"make_case: {p} does not exist or is not a file")
    try:
        loaded = trimesh.load(str(p), process=False, maintain_order=True)
    except Exception as exc:  # noqa: BLE001 - trimesh raises many types for unreadable files
        raise CaseError(f"make_case: cannot read {p} as a mesh ({type(exc).__name__}: {exc})") from exc
    if isinstance(loaded, trimesh.PointCloud) or (isinstance(loaded, trimesh.Scene) and not any(
            isinstance(g, trimesh.Trimesh) and len(g.faces) for g in loaded.geometry.values())):
        raise CaseError(f"make_case: {p} has no triangles (a point cloud or an empty scene); a case needs a surface")
    try:
        return as_single_trimesh(loaded, p)
    except CGError as exc:
        raise CaseError(f"make_case: {exc}") from exc


def _colours(tm) -> tuple[str, np.ndarray | None]:
    """(source, per-vertex RGB float (V,3)) for colour-only visuals; ('texture'|'procedural', None) otherwise."""
    visual = getattr(tm, "visual", None)
    kind = getattr(visual, "kind", None)
    if kind == "vertex":
        return "vertex_colours", np.asarray(visual.vertex_colors, dtype=np.float64)[:, :3] / 255.0
    if kind == "face":
        return "face_colours", None  # handled by splitting vertices per face
    if kind == "texture":
        material = getattr(visual, "material", None)
        has_image = material is not None and (getattr(material, "baseColorTexture", None) is not None
                                              or getattr(material, "image", None) is not None)
        if has_image and getattr(visual, "uv", None) is not None:
            return "texture", None
        main = getattr(material, "main_color", None) if material is not None else None
        if main is not None and not np.all(np.asarray(main)[:3] == 255) and not np.all(np.asarray(main)[:3] == 102):
            rgb = np.asarray(main, dtype=np.float64)[:3] / 255.0
            return "material_colour", np.repeat(rgb[None], len(tm.vertices), 0)
    return "procedural", None


# ---------------------------------------------------------------------------------------------- geometry
def drop_degenerate(v: np.ndarray, f: np.ndarray, eps: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Faces with (near) zero area or repeated vertex indices removed: (kept faces, boolean mask of kept)."""
    tri = v[f]
    area2 = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    scale2 = max(float(np.ptp(v, axis=0).max()) ** 2, 1e-30)
    keep = (area2 > eps * scale2) & (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    return f[keep], keep


def compact(v: np.ndarray, f: np.ndarray, *attrs: np.ndarray | None):
    """Unreferenced vertices removed; returns (v, f, *attrs) re-indexed."""
    used = np.unique(f)
    remap = np.full(len(v), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return (v[used], remap[f], *(None if a is None else a[used] for a in attrs))


def normalise(v: np.ndarray, radius: float = TARGET_RADIUS) -> tuple[np.ndarray, np.ndarray, float]:
    """Bounding-box centre to the origin, farthest vertex at ``radius``: (v', centre, scale)."""
    centre = 0.5 * (v.min(0) + v.max(0))
    extent = float(np.linalg.norm(v - centre, axis=1).max())
    if not np.isfinite(extent) or extent <= 0:
        raise CaseError("make_case: the mesh has no extent (all vertices coincide) or non-finite coordinates")
    scale = radius / extent
    return (v - centre) * scale, centre, scale


def decimate(v: np.ndarray, f: np.ndarray, colours: np.ndarray | None, max_faces: int):
    """Quadric edge collapse to ``max_faces`` (pymeshlab), carrying per-vertex colours along."""
    import pymeshlab as ml

    kwargs = {"vertex_matrix": v, "face_matrix": f.astype(np.int32)}
    if colours is not None:
        kwargs["v_color_matrix"] = np.concatenate([colours, np.ones((len(v), 1))], 1)
    ms = ml.MeshSet()
    ms.add_mesh(ml.Mesh(**kwargs))
    ms.meshing_decimation_quadric_edge_collapse(targetfacenum=int(max_faces), preservenormal=True)
    ms.meshing_remove_unreferenced_vertices()
    m = ms.current_mesh()
    out_c = np.asarray(m.vertex_color_matrix(), dtype=np.float64)[:, :3] if colours is not None else None
    return np.asarray(m.vertex_matrix(), dtype=np.float64), np.asarray(m.face_matrix(), dtype=np.int64), out_c


def _child(conn, fn, args, kwargs) -> None:
    import faulthandler

    faulthandler.disable()  # the parent reports a crash itself: no native stack dump on the user's terminal
    try:
        conn.send(("ok", fn(*args, **kwargs)))
    except Exception as exc:  # noqa: BLE001 - sent to the parent, which raises it as a CaseError
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def run_isolated(fn, *args, what: str, advice: str, **kwargs):
    """``fn(*args, **kwargs)`` in a forked child process, so that a crash in native code (xatlas 0.0.11 segfaults
    on some closed meshes of ~80k+ faces) becomes a :class:`CaseError` instead of killing the command silently.
    Runs in-process where ``fork`` is not available."""
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        return fn(*args, **kwargs)
    ctx = mp.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, args, kwargs), daemon=True)
    proc.start()
    send.close()
    try:
        status, value = receive.recv()
    except EOFError:
        status, value = "crash", None
    proc.join()
    if status == "ok":
        return value
    why = value if status == "error" else f"the process died with exit code {proc.exitcode}"
    raise CaseError(f"make_case: {what} failed ({why}); {advice}")


# ---------------------------------------------------------------------------------------------- colour
def procedural_colours(points: np.ndarray, cell: float = CELL) -> np.ndarray:
    """Deterministic colour of 3D points: a checker of ``cell``-sized cubes, each with its own hue (golden-ratio
    hash of the cell index) and alternating brightness, so every region of the surface looks different."""
    import colorsys

    idx = np.floor(points / cell).astype(np.int64)
    hue = np.mod(idx @ np.array([0.618034, 0.414214, 0.732051]), 1.0)
    value = np.where(np.mod(idx.sum(1), 2) == 0, 0.92, 0.55)
    rgb = np.array([colorsys.hsv_to_rgb(h, 0.7, 1.0) for h in np.round(hue, 4)])
    return rgb * value[:, None]


def bake_vertex_attribute_texture(v: np.ndarray, f: np.ndarray, attr: np.ndarray, texture_size: int,
                                  colour_of=None) -> Mesh:
    """xatlas UVs, then the per-vertex ``attr`` (colours, or positions mapped through ``colour_of``) rasterised
    in UV space into a ``texture_size`` texture; texels outside every chart copy the nearest chart texel."""
    from scipy import ndimage

    from cg_lightning.mesh.uv import unwrap_uv_arrays
    from cg_lightning.render.mesh.torch_backend import TorchMeshRasterizer

    vmap, fu, vt = run_isolated(unwrap_uv_arrays, v.astype(np.float32), f, texture_size=texture_size, padding=2,
                                what=f"the UV unwrap (xatlas) of {len(f)} faces",
                                advice="retry with a smaller --max-faces (e.g. 30000)")
    vt_t = torch.as_tensor(vt, dtype=torch.float32)
    pos = torch.cat([vt_t * 2 - 1, torch.zeros(len(vt), 1), torch.ones(len(vt), 1)], 1)[None]
    tri = torch.as_tensor(fu, dtype=torch.int32)
    rast = TorchMeshRasterizer().rasterize(pos, tri, (texture_size, texture_size))
    values = TorchMeshRasterizer().interpolate(torch.as_tensor(attr[vmap], dtype=torch.float32), rast, tri)[0]
    seen = (rast[0, ..., 3] > 0).numpy()
    if not seen.any():
        raise CaseError("make_case: the UV layout covers no texel; is the mesh degenerate?")
    values = values.numpy().astype(np.float64)
    if colour_of is not None:
        flat = np.zeros(values.shape[:2] + (3,))
        flat[seen] = colour_of(values[seen])
        values = flat
    _, (ri, ci) = ndimage.distance_transform_edt(~seen, return_indices=True)
    texture = values[ri, ci]
    mesh = Mesh(v=torch.as_tensor(v[vmap], dtype=torch.float32), f=torch.as_tensor(fu), vt=vt_t,
                albedo=torch.as_tensor(np.clip(texture, 0, 1), dtype=torch.float32))
    return mesh.auto_normals()


# ---------------------------------------------------------------------------------------------- the case
def build_case_mesh(path: str | Path, texture_size: int = 1024,
                    max_faces: int = DEFAULT_MAX_FACES) -> tuple[Mesh, dict]:
    """The normalised, textured ground-truth mesh of an asset and what was done to it."""
    tm = load_asset(path)
    v = np.asarray(tm.vertices, dtype=np.float64)
    f = np.asarray(tm.faces, dtype=np.int64)
    if not np.isfinite(v).all():
        raise CaseError(f"make_case: {path} has non-finite vertex coordinates")
    faces_in = len(f)
    source, colours = _colours(tm)
    vt = albedo = None
    notes = []
    if source == "texture":
        vt_t, albedo = _texture_of(tm)
        vt = None if vt_t is None else vt_t.numpy()
        if vt is None or albedo is None:
            source = "procedural"
    if source == "procedural" and getattr(getattr(tm, "visual", None), "uv", None) is not None:
        notes.append("the asset has UVs but no texture image could be loaded (is the file its .mtl names missing?); "
                     "it gets the procedural texture instead")
    if source == "face_colours":  # one copy of each vertex per face, coloured with its face's colour
        fc = np.asarray(tm.visual.face_colors, dtype=np.float64)[:, :3] / 255.0
        v, f, colours = v[f].reshape(-1, 3), np.arange(3 * len(f)).reshape(-1, 3), np.repeat(fc, 3, 0)
    f, keep = drop_degenerate(v, f)
    dropped = int((~keep).sum())
    if len(f) == 0:
        raise CaseError(f"make_case: {path}: every face is degenerate (zero area); nothing to render")
    v, f, colours, vt = compact(v, f, colours, vt)
    decimated = False
    if len(f) > max_faces:
        if source == "texture":
            raise CaseError(f"make_case: {path} has {len(f)} textured faces, more than --max-faces {max_faces}: "
                            "decimate it with its texture in a 3D tool first, or raise --max-faces (the oracle "
                            "renders it at every step: large meshes are slow on a CPU)")
        v, f, colours = decimate(v, f, colours, max_faces)
        decimated = True
    v, centre, scale = normalise(v)
    if source == "texture":
        mesh = Mesh(v=torch.as_tensor(v, dtype=torch.float32), f=torch.as_tensor(f),
                    vt=torch.as_tensor(vt, dtype=torch.float32), albedo=albedo).auto_normals()
    elif colours is not None:
        mesh = bake_vertex_attribute_texture(v, f, colours, texture_size)
    else:
        mesh = bake_vertex_attribute_texture(v, f, v, texture_size, colour_of=procedural_colours)
    info = {"colour_source": source, "faces_in": faces_in, "faces_out": mesh.num_faces,
            "dropped_degenerate_faces": dropped, "decimated": decimated, "scale": float(scale),
            "centre": [float(c) for c in centre], "notes": notes}
    if dropped:
        notes.append(f"{dropped} degenerate (zero-area) faces dropped")
    if decimated:
        notes.append(f"decimated from {faces_in} to {mesh.num_faces} faces (--max-faces {max_faces})")
    return mesh, info


def make_case(path: str | Path, out_dir: str | Path, name: str | None = None, elevation_deg: float = 0.0,
              size: int = 256, texture_size: int = 1024, max_faces: int = DEFAULT_MAX_FACES) -> CaseInfo:
    """Write ``model.glb``, ``<name>_rgba.png`` and ``case.json`` into ``out_dir``; returns what was done."""
    from cg_lightning.mesh.export import glb_bytes, png_bytes
    from cg_lightning.objects.procedural import render_reference
    from cg_lightning.utils.atomic import write_bytes, write_text

    if not -90.0 < float(elevation_deg) < 90.0:
        raise CaseError(f"make_case: --elevation {elevation_deg} must lie in (-90, 90) degrees")
    out = Path(out_dir)
    name = name or out.name
    if not name or "/" in name or name.startswith("."):
        raise CaseError(f"make_case: invalid case name {name!r}")
    mesh, done = build_case_mesh(path, texture_size=texture_size, max_faces=max_faces)
    rgba = render_reference(mesh, size=size, elevation_deg=float(elevation_deg))
    if rgba[..., 3].max() == 0:
        raise CaseError("make_case: the reference view shows nothing")
    glb, png = glb_bytes(mesh), png_bytes(rgba)
    info = CaseInfo(source=str(path), name=name, elevation_deg=float(elevation_deg), **done)
    write_bytes(out / "model.glb", glb)
    write_bytes(out / f"{name}_rgba.png", png)
    write_text(out / "case.json", json.dumps(asdict(info), indent=2) + "\n")
    return info


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cg_lightning.objects.make_case",
                                     description="Make a ground-truth case (model.glb + reference view) from a mesh.")
    parser.add_argument("mesh", help=".glb/.gltf/.obj/.ply/.stl/.off file")
    parser.add_argument("--out", required=True, help="case folder (created); its name is the default case name")
    parser.add_argument("--name", default=None, help="case name: the reference image is <name>_rgba.png")
    parser.add_argument("--elevation", type=float, default=0.0,
                        help="elevation of the reference view in degrees (DreamGaussian sign: -30 = from above)")
    parser.add_argument("--size", type=int, default=256, help="reference image size in pixels")
    parser.add_argument("--texture-size", type=int, default=1024, help="texture size for baked colours")
    parser.add_argument("--max-faces", type=int, default=DEFAULT_MAX_FACES,
                        help="untextured meshes above this are decimated; textured ones are refused")
    args = parser.parse_args(argv)
    try:
        info = make_case(args.mesh, args.out, name=args.name, elevation_deg=args.elevation, size=args.size,
                         texture_size=args.texture_size, max_faces=args.max_faces)
    except CGError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    for note in info.notes:
        print(f"note: {note}")
    print(f"wrote {out}/model.glb ({info.faces_out} faces, colours: {info.colour_source}), "
          f"{out}/{info.name}_rgba.png, {out}/case.json")
    elev = f" elevation={info.elevation_deg:g}" if info.elevation_deg else ""
    print(f"run: python launch.py +experiment=oracle image={out}/{info.name}_rgba.png{elev}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
