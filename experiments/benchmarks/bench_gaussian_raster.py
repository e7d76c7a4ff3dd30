"""Forward + backward time of the Gaussian rasterizer backends, and how much of its work the torch backend wastes.

Scenes (N points uniform in a ball of radius 0.5, 3-NN scales, seen from the front at radius 2, fovy 49.1):
``init`` is DreamGaussian's initialisation (opacity 0.1: nothing saturates); ``dense`` is a trained-like cloud
(scales x1.35, opacities sigmoid(N(1, 1)): most pixels reach the 1e-4 transmittance stop, where cutting each
block's list pays). Loss = MSE to a random image + mean alpha.

Columns for the torch backend: ``eval`` (pixel, Gaussian) elements evaluated, ``contrib`` elements with a
non-zero weight (alpha >= 1/255 before the pixel stopped), their ratio, and nanoseconds of fwd+bwd CPU time per
evaluated element. ``vs gsplat`` (with ``--gsplat-cpu``) is the time of gsplat's PyTorch rasterization path (gsplat's own
``_torch_impl``, run on the CPU through the stand-ins of tests/helpers/gsplat_cpu.py with 3DGS' coverage rule)
divided by ours on the same scene: > 1 means ours is faster.

    python experiments/benchmarks/bench_gaussian_raster.py                      # 128/256 px, 5k/20k, both scenes
    python experiments/benchmarks/bench_gaussian_raster.py --sizes 256 --counts 20000 --gsplat-cpu
    python experiments/benchmarks/bench_gaussian_raster.py --device cuda --backends torch,gsplat,inria

On a shared machine wall time is noisy: the table also shows the process CPU time and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cg_lightning.cameras import orbit  # noqa: E402
from cg_lightning.gaussians.model import GaussianModel  # noqa: E402
from cg_lightning.render.gaussian import build_gaussian_rasterizer  # noqa: E402
from cg_lightning.render.gaussian.reference import render_reference  # noqa: E402
from cg_lightning.render.gaussian.torch_backend import TorchGaussianRasterizer  # noqa: E402


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_scene(kind: str, count: int, device: torch.device) -> GaussianModel:
    model = GaussianModel.random_ball(count, generator=torch.Generator().manual_seed(0))
    if kind == "dense":
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            model.scaling.add_(0.3)
            model.opacity.copy_(1.0 + torch.randn(model.opacity.shape, generator=g))
    elif kind != "init":
        raise SystemExit(f"unknown scene {kind!r} (init | dense)")
    return model.to(device)


def time_step(render, model: GaussianModel, target: torch.Tensor, device: torch.device) -> tuple[float, float, float]:
    """(forward wall, backward wall, total CPU time) of one render + backward."""
    model.zero_grad(set_to_none=True)
    sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    out = render()
    sync(device)
    t1 = time.perf_counter()
    loss = ((out.image - target) ** 2).mean() + out.alpha.mean()
    loss.backward()
    sync(device)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, time.process_time() - c0


def gsplat_cpu_rasterizer():
    """gsplat's PyTorch path on the CPU (None when gsplat or the test helpers are missing)."""
    try:
        import gsplat.cuda._wrapper as wrapper  # noqa: F401

        from cg_lightning.render.gaussian.gsplat_backend import GsplatRasterizer
        from tests.helpers import gsplat_cpu
    except ImportError:
        return None
    sys.modules["nerfacc"] = gsplat_cpu.NERFACC
    wrapper.rasterize_to_indices_in_range = gsplat_cpu.rasterize_to_indices_in_range
    return GsplatRasterizer(kernels=gsplat_cpu.aligned_kernels())


def make_rasterizer(backend: str):
    if backend == "torch":
        return TorchGaussianRasterizer(count_contributing=True)
    if backend == "gsplat-cpu":
        raster = gsplat_cpu_rasterizer()
        if raster is None:
            raise SystemExit("gsplat-cpu needs gsplat installed and the repository's tests/helpers")
        return raster
    return build_gaussian_rasterizer(backend)


def bench(backend: str, scene: str, size: int, count: int, device: torch.device, repeats: int) -> dict:
    model = make_scene(scene, count, device)
    cam = orbit(0.0, 0.0, width=size, height=size).to(device)
    bg = torch.ones(3, device=device)
    target = torch.rand(3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    raster = make_rasterizer(backend)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    time_step(lambda: raster.render(model, cam, bg), model, target, device)  # warm-up (also fills last_stats)
    stats = dict(getattr(raster, "last_stats", {}))
    if backend == "torch":
        raster.count_contributing = False  # the count is an extra pass: keep it out of the timing
    runs = [time_step(lambda: raster.render(model, cam, bg), model, target, device) for _ in range(repeats)]
    fwd, bwd, cpu = (statistics.median(r[i] for r in runs) for i in range(3))
    return {
        "fwd": fwd,
        "bwd": bwd,
        "total": fwd + bwd,
        "cpu": cpu,
        "pairs": stats.get("pairs"),
        "elements": stats.get("elements"),
        "contributing": stats.get("contributing"),
    }


def bench_reference(size: int, count: int, device: torch.device) -> tuple[float, float]:
    model = GaussianModel.random_ball(count, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        model.scaling.add_(1.0)  # few Gaussians: make them cover the image like a dense cloud would
    cam = orbit(0.0, 0.0, width=size, height=size).to(device)
    bg = torch.ones(3, device=device)
    target = torch.rand(3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    raster = build_gaussian_rasterizer("torch")
    time_step(lambda: raster.render(model, cam, bg), model, target, device)
    tile = min(sum(time_step(lambda: raster.render(model, cam, bg), model, target, device)[:2]) for _ in range(3))
    naive = sum(time_step(lambda: render_reference(model, cam, bg), model, target, device)[:2])
    return naive, tile


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=ints, default=[128, 256], help="image sizes (square), e.g. 128,256,512")
    ap.add_argument("--counts", type=ints, default=[5000, 20000], help="Gaussian counts, e.g. 5000,20000,50000")
    ap.add_argument("--scenes", default="init,dense", help="comma list of init,dense")
    ap.add_argument("--backends", default="torch", help="comma list of torch,gsplat,inria")
    ap.add_argument("--gsplat-cpu", action="store_true", help="also time gsplat's PyTorch path (slow: ~100 s per row)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = leave default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ref-size", type=int, default=64, help="image size for the naive-reference comparison")
    ap.add_argument("--ref-count", type=int, default=1000, help="Gaussians for the naive-reference comparison")
    ap.add_argument("--no-ref", action="store_true", help="skip the naive-reference comparison")
    args = ap.parse_args()

    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name} | torch {torch.__version__} | load average {load:.2f}")
    compare = device.type == "cpu" and args.gsplat_cpu and gsplat_cpu_rasterizer() is not None
    header = (
        f"{'backend':10} {'scene':6} {'size':>5} {'N':>6} {'fwd s':>7} {'bwd s':>7} {'total s':>8} {'cpu s':>7} "
        f"{'pairs':>8} {'eval':>9} {'contrib':>9} {'ev/con':>6} {'ns/el':>6} {'vs gsplat':>9}"
    )
    print(header)
    print("-" * len(header))
    backends = args.backends.split(",")
    for scene in args.scenes.split(","):
        for size in args.sizes:
            for count in args.counts:
                ref = bench("gsplat-cpu", scene, size, count, device, args.repeats) if compare else None
                rows = [(b, bench(b, scene, size, count, device, args.repeats)) for b in backends]
                if ref is not None:
                    rows.append(("gsplat-cpu", ref))
                for backend, r in rows:
                    ratio = r["elements"] / r["contributing"] if r["elements"] and r["contributing"] else None
                    ns = 1e9 * r["cpu"] / r["elements"] if r["elements"] else None
                    speed = ref["total"] / r["total"] if ref is not None else None
                    print(
                        f"{backend:10} {scene:6} {size:5d} {count:6d} {r['fwd']:7.3f} {r['bwd']:7.3f} "
                        f"{r['total']:8.3f} {r['cpu']:7.3f} {fmt(r['pairs'], 'd'):>8} {fmt(r['elements'], 'd'):>9} "
                        f"{fmt(r['contributing'], 'd'):>9} {fmt(ratio, '.2f'):>6} {fmt(ns, '.1f'):>6} "
                        f"{fmt(speed, '.2f'):>9}",
                        flush=True,
                    )
    print(
        "(total = median fwd + median bwd wall; cpu = median process CPU time of fwd+bwd, all threads; eval = "
        "(pixel, Gaussian) elements composited; contrib = those with a non-zero weight; ns/el = cpu / eval; "
        "vs gsplat = gsplat PyTorch path total / this total)"
    )
    if not args.no_ref:
        naive, tile = bench_reference(args.ref_size, args.ref_count, device)
        print(
            f"naive O(pixels x N) reference at {args.ref_size}px, {args.ref_count} Gaussians: "
            f"{naive:.3f} s fwd+bwd vs tile backend {tile:.4f} s -> {naive / tile:.0f}x faster"
        )


if __name__ == "__main__":
    main()
