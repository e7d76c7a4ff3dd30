"""The whole pipeline against ground truth: ``+experiment=oracle`` on the bundled objects, scored geometrically.

Runs ``launch.py`` (the real entry point) at CPU size with the oracle prior, then compares the outputs with the
object's true mesh:

- Chamfer distance (mean of both directions, in world units; the objects span about 1 unit) between points sampled
  on the coarse mesh / the final mesh and on the ground-truth mesh;
- textured novel-view PSNR of the final mesh against the true mesh at 8 azimuths (elevation 0, and -30), white
  background, over the whole image;
- the job's wall time per stage (from metrics.json).

    python experiments/benchmarks/bench_oracle_pipeline.py --objects box torus --steps 300
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "experiments" / "data"
sys.path.insert(0, str(ROOT))

from cg_lightning.cameras import orbit  # noqa: E402
from cg_lightning.mesh.mesh import Mesh  # noqa: E402
from cg_lightning.render.mesh import build_mesh_rasterizer, render_mesh  # noqa: E402


def cpu_overrides(steps: int, size: int) -> list[str]:
    """The oracle experiment shrunk to CPU size (DreamGaussian-sized stages, no QA-Triplet: no LPIPS weights)."""
    return [
        "stage1=dreamgaussian", "loss=dreamgaussian", "stage2=dreamgaussian", "evaluation=smoke", "logger=csv",
        "device=cpu", f"stage1.steps={steps}", f"stage1.ref_size={size}",
        f"stage1.views.resolution.values=[{size},{size},{size}]", "stage1.density.densify_from=50",
        "stage1.density.interval=50", f"stage2.ref_size={size}", f"stage2.views.resolution={size * 2}",
        "mesh.resolution=96", "mesh.num_blocks=8", "mesh.texture_size=512", "mesh.bake_render_size=256",
    ]


def sample_surface(mesh: Mesh, n: int, seed: int = 0) -> np.ndarray:
    """Area-weighted uniform samples on the triangles."""
    rng = np.random.default_rng(seed)
    v, f = mesh.v.detach().cpu().numpy().astype(np.float64), mesh.f.cpu().numpy()
    tri = v[f]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    idx = rng.choice(len(f), size=n, p=area / area.sum())
    u, w = rng.random(n), rng.random(n)
    flip = u + w > 1
    u[flip], w[flip] = 1 - u[flip], 1 - w[flip]
    t = tri[idx]
    return t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + w[:, None] * (t[:, 2] - t[:, 0])


def chamfer(a: Mesh, b: Mesh, n: int = 20000) -> float:
    from scipy.spatial import cKDTree

    pa, pb = sample_surface(a, n, 0), sample_surface(b, n, 1)
    return 0.5 * (cKDTree(pb).query(pa)[0].mean() + cKDTree(pa).query(pb)[0].mean())


@torch.no_grad()
def novel_view_psnr(pred: Mesh, truth: Mesh, size: int = 256) -> float:
    rasterizer = build_mesh_rasterizer("torch")
    white = torch.ones(3)
    mse = []
    for elevation in (0.0, -30.0):
        for azimuth in np.linspace(0, 360, 8, endpoint=False):
            cam = orbit(elevation, float(azimuth), width=size, height=size)
            a = render_mesh(pred, cam, rasterizer, white).image
            b = render_mesh(truth, cam, rasterizer, white).image
            mse.append(float(((a - b) ** 2).mean()))
    return float(10 * np.log10(1.0 / max(np.mean(mse), 1e-12)))


def run(name: str, args: argparse.Namespace, out_root: Path) -> dict:
    image = DATA / name / f"{name}_rgba.png"
    cmd = [sys.executable, "launch.py", "+experiment=oracle", f"image={image}", f"paths.output_root={out_root}",
           *cpu_overrides(args.steps, args.size)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{name}: pipeline failed\n{res.stderr[-3000:]}")
    job = next(out_root.rglob("metrics.json")).parent
    metrics = json.loads((job / "metrics.json").read_text())
    truth = Mesh.load(DATA / name / "model.glb")
    coarse, final = Mesh.load(job / "mesh" / "coarse.glb"), Mesh.load(job / "stage2" / "model.glb")
    return {"object": name, "wall_s": wall, "stage1_s": metrics.get("time/stage1_s", float("nan")),
            "mesh_s": metrics.get("time/mesh_s", float("nan")), "stage2_s": metrics.get("time/stage2_s", float("nan")),
            "chamfer_coarse": chamfer(coarse, truth), "chamfer_final": chamfer(final, truth),
            "psnr_coarse": novel_view_psnr(coarse, truth), "psnr_final": novel_view_psnr(final, truth)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", nargs="+", default=["box", "torus"])
    parser.add_argument("--steps", type=int, default=300, help="stage-1 steps")
    parser.add_argument("--size", type=int, default=128, help="stage-1 reference/render size")
    parser.add_argument("--out", default=None, help="output root (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out_root = Path(args.out) if args.out else Path(tmp)
        rows = [run(name, args, out_root / name) for name in args.objects]
    header = (f"{'object':8} {'wall s':>7} {'st1 s':>6} {'mesh s':>6} {'st2 s':>6} {'chamfer coarse':>14} "
              f"{'chamfer final':>13} {'PSNR coarse':>11} {'PSNR final':>10}")
    print(f"oracle pipeline, stage 1: {args.steps} steps at {args.size} px, CPU")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['object']:8} {r['wall_s']:7.1f} {r['stage1_s']:6.1f} {r['mesh_s']:6.1f} {r['stage2_s']:6.1f} "
              f"{r['chamfer_coarse']:14.4f} {r['chamfer_final']:13.4f} {r['psnr_coarse']:11.2f} "
              f"{r['psnr_final']:10.2f}")


if __name__ == "__main__":
    main()
