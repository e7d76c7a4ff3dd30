"""Stage-1 benchmark on CPU (or GPU): fit Gaussians to a bundled object with the ground-truth oracle prior.

Reports wall time, time per step, final Gaussian count and PSNR of the reference view (Gaussian render vs the input
image, both on white) plus the mean PSNR of 8 novel views at elevation 0 against the oracle's true renders.

Target (issue 5): 500 steps at 128 px on CPU in <= 5 minutes.

    python experiments/benchmarks/bench_stage1.py --objects box sphere --steps 500 --size 128
    python experiments/benchmarks/bench_stage1.py --objects torus --steps 200 --qa-triplet   # + QA-Triplet (official)

The oracle renders on white, so novel views use a white background here (``--invert-bg-prob`` to change it).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from cg_lightning.data import ReferenceImage, ViewSampler
from cg_lightning.gaussians.density import DensityController
from cg_lightning.losses import QATripletLoss, ReferenceAlphaLoss, ReferenceRGBLoss, SDSLoss
from cg_lightning.priors.oracle import OraclePrior
from cg_lightning.render.gaussian.base import build_gaussian_rasterizer
from cg_lightning.schedules import LinearRamp
from cg_lightning.stages.gaussian_stage import GaussianStage

DATA = Path(__file__).resolve().parents[1] / "data"


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = F.mse_loss(a.float(), b.float()).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def load_reference(folder: Path) -> ReferenceImage:
    from PIL import Image

    return ReferenceImage.from_rgba(np.asarray(Image.open(folder / f"{folder.name}_rgba.png").convert("RGBA")), elevation=0.0)


@torch.no_grad()
def evaluate(stage: GaussianStage, prior: OraclePrior, size: int) -> tuple[float, float]:
    white = torch.ones(3, device=stage.device)
    ref = stage.rasterizer.render(stage.gaussians, stage.reference_camera(), white).image
    ref_psnr = psnr(ref, stage.ref_rgb[0])
    azims = torch.linspace(0.0, 360.0, 9)[:-1]
    zeros = torch.zeros_like(azims)
    truth = prior.render_views(zeros, azims, zeros).to(stage.device)
    views = ViewSampler(batch_size=1, resolution=size)
    scores = []
    from cg_lightning.cameras import orbit

    for k, a in enumerate(azims.tolist()):
        cam = orbit(0.0, a, views.radius, fovy_deg=stage.fovy, width=size, height=size).to(stage.device)
        img = stage.rasterizer.render(stage.gaussians, cam, white).image
        scores.append(psnr(img, F.interpolate(truth[k:k + 1], size=(size, size), mode="bilinear",
                                              align_corners=False)[0]))
    return ref_psnr, float(np.mean(scores))


def run(name: str, args: argparse.Namespace) -> dict:
    folder = DATA / name
    device = torch.device(args.device)
    prior = OraclePrior(mesh_path=str(folder / "model.glb"), resolution=args.size)
    losses = {"reference_rgb": ReferenceRGBLoss(LinearRamp(0.0, 1e4)),
              "reference_alpha": ReferenceAlphaLoss(LinearRamp(0.0, 1e3)), "sds": SDSLoss(args.sds_weight)}
    if args.qa_triplet:
        from cg_lightning.perceptual.lpips import LPIPS

        losses["qa_triplet"] = QATripletLoss(variant="official",
                                             lpips=LPIPS(net="vgg", pretrained=not args.random_lpips))
    stage = GaussianStage(
        reference=load_reference(folder), prior=prior, rasterizer=build_gaussian_rasterizer(args.renderer),
        losses=losses, views=ViewSampler(batch_size=args.batch_size, resolution=args.size,
                                         invert_bg_prob=args.invert_bg_prob),
        density=DensityController(), steps=args.steps, ref_size=args.size, num_points=args.num_points,
        seed=args.seed, image_log_every_n_steps=0)
    trainer = L.Trainer(max_steps=args.steps, max_epochs=-1, accelerator=device.type, devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        inference_mode=False, num_sanity_val_steps=0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer.fit(stage)
    stage.finalize()
    seconds = time.perf_counter() - t0
    ref_psnr, novel_psnr = evaluate(stage, prior, args.size)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"object": name, "steps": args.steps, "size": args.size, "gaussians": stage.gaussians.num_points,
            "time_s": seconds, "s_per_step": seconds / args.steps, "ref_psnr": ref_psnr, "novel_psnr": novel_psnr,
            "peak_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", nargs="+", default=["box"], choices=sorted(p.name for p in DATA.iterdir()
                                                                                  if p.is_dir()))
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--size", type=int, default=128, help="reference and render resolution")
    parser.add_argument("--num-points", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--invert-bg-prob", type=float, default=0.0)
    parser.add_argument("--sds-weight", type=float, default=1.0, help="weight of the oracle's MSE-like guidance")
    parser.add_argument("--qa-triplet", action="store_true", help="add the official QA-Triplet term")
    parser.add_argument("--random-lpips", action="store_true", help="random LPIPS backbone (no weights needed)")
    parser.add_argument("--renderer", default="torch")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    rows = [run(name, args) for name in args.objects]
    print(f"device {args.device}, torch threads {torch.get_num_threads()}")
    header = f"{'object':8} {'steps':>5} {'px':>4} {'N':>6} {'time s':>7} {'s/step':>7} {'ref PSNR':>8} " \
             f"{'novel PSNR':>10} {'peak GiB':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['object']:8} {r['steps']:5d} {r['size']:4d} {r['gaussians']:6d} {r['time_s']:7.1f} "
              f"{r['s_per_step']:7.3f} {r['ref_psnr']:8.2f} {r['novel_psnr']:10.2f} {r['peak_gib']:8.2f}")


if __name__ == "__main__":
    main()
