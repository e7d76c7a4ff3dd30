"""Source meshes of the harder bundled cases, made with trimesh primitives (no downloads, no licences).

Why: the box, sphere and torus are convex or nearly so; the ground-truth benchmark also needs thin parts and
concavities, and assets that go through :mod:`cg_lightning.objects.make_case` the way a user's would:

- ``table``: a slab on four thin legs (five separate parts, no UVs, no colours -> make_case's procedural texture),
  tilted so the reference view shows the top and two sides; saved as ``.obj``;
- ``mug``: a hollow cup (an open concavity: the inside is only seen from above) with a thin ring handle, red and
  cream stripes and a blue handle as *vertex colours*, tilted towards the camera; saved as ``.ply``.

    python -m cg_lightning.objects.assets --out experiments/data

writes ``<out>/<name>/source.<ext>`` and turns each into a case (``model.glb``, ``<name>_rgba.png``, ``case.json``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


def _tilt(mesh, yaw_deg: float, pitch_deg: float):
    import trimesh

    r = trimesh.transformations.rotation_matrix(math.radians(pitch_deg), [1, 0, 0])
    r = trimesh.transformations.rotation_matrix(math.radians(yaw_deg), [0, 1, 0]) @ r
    mesh.apply_transform(r)
    return mesh


def make_table():
    """Slab 1.0 x 0.08 x 0.6 on four legs of 0.05 x 0.6 x 0.05 (thin parts), yawed 30 and pitched 25 degrees."""
    import trimesh

    top = trimesh.creation.box((1.0, 0.08, 0.6))
    top.apply_translation((0, 0.3, 0))
    legs = []
    for x in (-0.44, 0.44):
        for z in (-0.24, 0.24):
            leg = trimesh.creation.box((0.05, 0.6, 0.05))
            leg.apply_translation((x, -0.04, z))
            legs.append(leg)
    return _tilt(trimesh.util.concatenate([top, *legs]), 30.0, 25.0)


def make_mug():
    """Open cup (outer radius 0.35, wall 0.05, height 0.7) with a thin ring handle; vertex colours; tilted."""
    import trimesh

    wall = np.linspace(-0.35, 0.35, 11)  # rows on the walls so that the stripes exist as vertex colours
    profile = np.concatenate([[[0.0, -0.35]], np.stack([np.full(11, 0.35), wall], 1),
                              np.stack([np.full(10, 0.30), wall[::-1][:-1]], 1), [[0.30, -0.30], [0.0, -0.30]]])
    cup = trimesh.creation.revolve(profile, sections=48)  # around z
    cup.apply_transform(trimesh.transformations.rotation_matrix(-math.pi / 2, [1, 0, 0]))  # axis to +y
    handle = trimesh.creation.torus(major_radius=0.17, minor_radius=0.035, major_sections=32, minor_sections=12)
    handle.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 2, [1, 0, 0]))  # ring in the x-y plane
    handle.apply_translation((0.42, 0.0, 0.0))
    y = cup.vertices[:, 1]
    stripes = np.round((y + 0.35) / 0.07).astype(int) // 2 % 2 == 0  # bands two wall rows high
    cup_colours = np.where(stripes[:, None], [200, 40, 40, 255], [240, 230, 200, 255]).astype(np.uint8)
    handle_colours = np.tile(np.array([[40, 80, 200, 255]], dtype=np.uint8), (len(handle.vertices), 1))
    cup.visual = trimesh.visual.ColorVisuals(cup, vertex_colors=cup_colours)
    handle.visual = trimesh.visual.ColorVisuals(handle, vertex_colors=handle_colours)
    return _tilt(trimesh.util.concatenate([cup, handle]), -35.0, 30.0)


ASSETS: dict[str, tuple[Callable, str]] = {"table": (make_table, "obj"), "mug": (make_mug, "ply")}


def write_asset(name: str, out_dir: str | Path) -> Path:
    """Write ``<out>/<name>/source.<ext>`` and make the case beside it; returns the case folder."""
    from cg_lightning.objects.make_case import make_case

    build, ext = ASSETS[name]
    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / f"source.{ext}"
    build().export(str(source))
    make_case(source, folder, name=name)
    return folder


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="experiments/data", help="output folder (one sub-folder per asset)")
    parser.add_argument("--only", nargs="*", choices=sorted(ASSETS), help="assets to write (default: all)")
    args = parser.parse_args(argv)
    for name in args.only or list(ASSETS):
        print(f"wrote {write_asset(name, args.out)}")


if __name__ == "__main__":
    main()
