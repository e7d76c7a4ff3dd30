"""Mesh rasterizer benchmark: rasterize / interpolate / texture / antialias and full render_mesh, forward + backward.

Scenes: an icosphere (radius 0.6, ~5k or ~20k faces) seen from an orbit camera, textured with a 1024^2 texture.
Reports CPU time per call (``time.process_time``, robust on a shared machine) or CUDA wall time per backend.

    python experiments/benchmarks/bench_mesh_raster.py                     # torch backend, CPU
    python experiments/benchmarks/bench_mesh_raster.py --backends torch nvdiffrast --device cuda
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import trimesh

from cg_lightning.cameras import orbit
from cg_lightning.mesh import Mesh
from cg_lightning.render.mesh import build_mesh_rasterizer, render_mesh


def sphere(subdivisions: int, device: torch.device) -> Mesh:
    s = trimesh.creation.icosphere(subdivisions, radius=0.6)
    v = torch.tensor(s.vertices, dtype=torch.float32)
    vt = torch.stack([torch.atan2(v[:, 0], v[:, 2]) / (2 * torch.pi) + 0.5, torch.acos(v[:, 1] / 0.6) / torch.pi], 1)
    albedo = torch.rand(1024, 1024, 3, generator=torch.Generator().manual_seed(0))
    return Mesh(v=v, f=torch.tensor(s.faces), vt=vt, albedo=albedo).auto_normals().to(device)


def timed(fn: Callable[[], None], device: torch.device, repeat: int) -> float:
    """Seconds per call: CPU time on CPU, synchronised wall time on CUDA."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(repeat):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t) / repeat
    t = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - t) / repeat


def bench(backend: str, subdiv: int, res: int, device: torch.device, repeat: int) -> dict[str, float]:
    r = build_mesh_rasterizer(backend)
    mesh = sphere(subdiv, device)
    cam = orbit(-20.0, 30.0, 2.0, width=res, height=res).to(device)
    pos = (F.pad(mesh.v, (0, 1), value=1.0) @ cam.mvp_gl.T)[None].contiguous()
    tri = mesh.f.int()
    rast = r.rasterize(pos, tri, (res, res))
    uv = r.interpolate(mesh.vt, rast, tri)
    tex = mesh.albedo[None]
    col = r.texture(tex, uv, "linear-mipmap-linear")
    out = {"faces": float(mesh.num_faces), "coverage": float((rast[..., 3] > 0).float().mean())}
    out["rasterize"] = timed(lambda: r.rasterize(pos, tri, (res, res)), device, repeat)
    out["interpolate"] = timed(lambda: r.interpolate(mesh.vt, rast, tri), device, repeat)
    out["texture mip"] = timed(lambda: r.texture(tex, uv, "linear-mipmap-linear"), device, repeat)
    out["antialias"] = timed(lambda: r.antialias(col, rast, pos, tri), device, repeat)

    def fwd_bwd() -> None:
        p = pos.detach().requires_grad_()
        t = tex.detach().requires_grad_()
        ra = r.rasterize(p, tri, (res, res))
        c = r.texture(t, r.interpolate(mesh.vt, ra, tri), "linear")
        r.antialias(c * (ra[..., 3:] > 0), ra, p, tri).sum().backward()

    out["raster+tex+aa fwd+bwd"] = timed(fwd_bwd, device, repeat)
    out["render_mesh"] = timed(lambda: render_mesh(mesh, cam, r, 1.0), device, repeat)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", nargs="+", default=["torch"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--res", nargs="+", type=int, default=[256, 512])
    ap.add_argument("--subdiv", nargs="+", type=int, default=[4, 5], help="icosphere level: 4 ~5k, 5 ~20k faces")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for backend in args.backends:
        for subdiv in args.subdiv:
            for res in args.res:
                rows.append((backend, res, bench(backend, subdiv, res, device, args.repeat)))
    keys = [k for k in rows[0][2] if k not in ("faces", "coverage")]
    unit = "ms (CUDA wall)" if device.type == "cuda" else "ms (CPU time)"
    print(f"device={device} threads={torch.get_num_threads()} times in {unit}")
    print(f"{'backend':10s} {'faces':>7s} {'res':>5s} {'cover':>6s} " + " ".join(f"{k:>22s}" for k in keys))
    for backend, res, m in rows:
        print(f"{backend:10s} {int(m['faces']):7d} {res:5d} {m['coverage']:6.2f} "
              + " ".join(f"{1000 * m[k]:22.1f}" for k in keys))


if __name__ == "__main__":
    main()
