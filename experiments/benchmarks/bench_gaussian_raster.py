"""Forward + backward time of the Gaussian rasterizer backends, printed as a table.

Scene: DreamGaussian's initialisation (N points uniform in a ball of radius 0.5, 3-NN scales, opacity 0.1)
seen from the front at radius 2, fovy 49.1; loss = MSE to a random image + mean alpha. Also times the naive
O(pixels x Gaussians) reference at a small size and reports the speed-up of the tile backend.

    python experiments/benchmarks/bench_gaussian_raster.py                      # quick: 128/256 px, 5k/20k
    python experiments/benchmarks/bench_gaussian_raster.py --sizes 128,256,512 --counts 5000,20000,50000
    python experiments/benchmarks/bench_gaussian_raster.py --device cuda --backends torch,gsplat,inria

On a shared machine wall time is noisy: the table also shows the process CPU time and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from cg_lightning.cameras import orbit
from cg_lightning.gaussians.model import GaussianModel
from cg_lightning.render.gaussian import build_gaussian_rasterizer
from cg_lightning.render.gaussian.reference import render_reference


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(
    render, model: GaussianModel, target: torch.Tensor, device: torch.device
) -> tuple[float, float, float]:
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


def bench(backend: str, size: int, count: int, device: torch.device, repeats: int) -> dict:
    model = GaussianModel.random_ball(count, generator=torch.Generator().manual_seed(0)).to(device)
    cam = orbit(0.0, 0.0, width=size, height=size).to(device)
    bg = torch.ones(3, device=device)
    target = torch.rand(3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    raster = build_gaussian_rasterizer(backend)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    time_step(lambda: raster.render(model, cam, bg), model, target, device)  # warm-up
    runs = [time_step(lambda: raster.render(model, cam, bg), model, target, device) for _ in range(repeats)]
    fwd, bwd, cpu = (statistics.median(r[i] for r in runs) for i in range(3))
    row = {
        "backend": backend,
        "size": size,
        "count": count,
        "fwd": fwd,
        "bwd": bwd,
        "total": fwd + bwd,
        "best": min(r[0] + r[1] for r in runs),
        "cpu": cpu,
    }
    stats = getattr(raster, "last_stats", {})
    row["pairs"] = stats.get("pairs")
    row["mem_mb"] = (
        torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else (stats["elements"] * 8 / 2**20 if stats else None)
    )
    return row


def bench_reference(size: int, count: int, device: torch.device) -> tuple[float, float]:
    model = GaussianModel.random_ball(count, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        model.scaling.add_(1.0)  # few Gaussians: make them cover the image like a dense cloud would
    cam = orbit(0.0, 0.0, width=size, height=size).to(device)
    bg = torch.ones(3, device=device)
    target = torch.rand(3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    raster = build_gaussian_rasterizer("torch")
    time_step(lambda: raster.render(model, cam, bg), model, target, device)
    tile = min(
        sum(time_step(lambda: raster.render(model, cam, bg), model, target, device)[:2]) for _ in range(3)
    )
    naive = sum(time_step(lambda: render_reference(model, cam, bg), model, target, device)[:2])
    return naive, tile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=ints, default=[128, 256], help="image sizes (square), e.g. 128,256,512")
    ap.add_argument(
        "--counts", type=ints, default=[5000, 20000], help="Gaussian counts, e.g. 5000,20000,50000"
    )
    ap.add_argument("--backends", default="torch", help="comma list of torch,gsplat,inria")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ref-size", type=int, default=64, help="image size for the naive-reference comparison")
    ap.add_argument(
        "--ref-count", type=int, default=1000, help="Gaussians for the naive-reference comparison"
    )
    ap.add_argument("--no-ref", action="store_true", help="skip the naive-reference comparison")
    args = ap.parse_args()

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"device: {name} | torch {torch.__version__} | load average {load:.2f}")
    header = (
        f"{'backend':8} {'size':>5} {'N':>6} {'fwd s':>7} {'bwd s':>7} {'total s':>8} {'best s':>7} "
        f"{'cpu s':>7} {'pairs':>8} {'mem MB':>7}"
    )
    print(header)
    print("-" * len(header))
    for backend in args.backends.split(","):
        for size in args.sizes:
            for count in args.counts:
                r = bench(backend, size, count, device, args.repeats)
                pairs = "-" if r["pairs"] is None else str(r["pairs"])
                mem = "-" if r["mem_mb"] is None else f"{r['mem_mb']:.0f}"
                print(
                    f"{backend:8} {size:5d} {count:6d} {r['fwd']:7.3f} {r['bwd']:7.3f} {r['total']:8.3f} "
                    f"{r['best']:7.3f} {r['cpu']:7.3f} {pairs:>8} {mem:>7}",
                    flush=True,
                )
    print(
        "(total = median fwd + median bwd; best = fastest single run; cpu = process CPU time, all threads;"
        " mem = saved compositing tensors (CPU) or peak allocated (CUDA))"
    )
    if not args.no_ref:
        naive, tile = bench_reference(args.ref_size, args.ref_count, device)
        print(
            f"naive O(pixels x N) reference at {args.ref_size}px, {args.ref_count} Gaussians: "
            f"{naive:.3f} s fwd+bwd vs tile backend {tile:.4f} s -> {naive / tile:.0f}x faster"
        )


if __name__ == "__main__":
    main()
