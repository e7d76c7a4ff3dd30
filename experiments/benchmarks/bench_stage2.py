"""Stage-2 benchmark: texture refinement speed with the tiny Zero123, and quality with the oracle prior.

speed   - DreamGaussian's stage 2 on a bundled object: 50 steps, 1 novel view per step rendered at 512 px (random
          render scale 0.125..2, so rasters up to 1024 px), reference loss at 256 px, a 1024x1024 texture, the pure-PyTorch
          mesh rasterizer and the tiny random Zero123 (``prior.refine`` with a 50-step DDIM schedule). Target (issue 6):
          <= 2 minutes on CPU.
quality - the same loop with the oracle prior (``refine`` returns the true render) starting from a degraded texture:
          ``grey`` (0.5 everywhere: the stage-2 default for an untextured mesh) or ``washed`` (blurred, half-contrast
          ground truth, a stand-in for a blurry bake). Textured novel-view PSNR before/after over 12 views
          (8 azimuths at elevation 0, 4 at elevation -30), on white, full image and object pixels only.
coarse  - the same loop from the coarse mesh of a finished oracle run (``--run JOB_DIR``, ``--objects`` its object):
          PSNR before/after at the oracle benchmark's 16 views (elevations 0 and -30, 8 azimuths), and the squared
          error split by where it comes from: pixels both meshes cover, pixels only ours covers (our surface
          outside the true silhouette) and pixels only the truth covers. ``--stage2 key=value`` sets TextureStage
          arguments (e.g. ``silhouette=antialiased texture_lr=0.02``), ``--oracle key=value`` OraclePrior ones.
          ``--runs box=DIR torus=DIR ...`` does several objects in one table; ``--noisy`` uses the imperfect oracle
          (its default errors, seeded); ``--batch-size 2 --size 256 --ref-size 128`` is the CPU oracle preset.

    python experiments/benchmarks/bench_stage2.py                        # both parts, defaults above
    python experiments/benchmarks/bench_stage2.py --part quality --objects box sphere torus --size 256
    python experiments/benchmarks/bench_stage2.py --part speed --threads 1
    python experiments/benchmarks/bench_stage2.py --part coarse --run outputs/.../seed0/... --objects box \
        --size 256 --ref-size 128
    python experiments/benchmarks/bench_stage2.py --part coarse --runs box=/tmp/o_box torus=/tmp/o_torus \
        --size 256 --ref-size 128 --batch-size 2 --threads 1 [--noisy]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from cg_lightning.cameras import orbit
from cg_lightning.data import ReferenceImage, ViewSampler
from cg_lightning.mesh.mesh import Mesh
from cg_lightning.priors.oracle import OraclePrior
from cg_lightning.render.mesh import build_mesh_rasterizer, render_mesh
from cg_lightning.stages.texture_stage import TextureStage

DATA = Path(__file__).resolve().parents[1] / "data"
EVAL_VIEWS = [(0.0, a) for a in range(0, 360, 45)] + [(-30.0, a) for a in (45, 135, 225, 315)]


def load_reference(folder: Path) -> ReferenceImage:
    from PIL import Image

    return ReferenceImage.from_rgba(np.asarray(Image.open(folder / f"{folder.name}_rgba.png").convert("RGBA")), elevation=0.0)


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    err = (a.float() - b.float()) ** 2
    mse = float(err.mean()) if mask is None else float((err * mask).sum() / (mask.sum() * err.shape[0]).clamp_min(1))
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def degrade(albedo: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "grey":
        return torch.full_like(albedo, 0.5)
    if kind == "washed":  # blur (box filter ~1/16 of the texture width, 3 passes ~ Gaussian) and halve contrast
        x = albedo.permute(2, 0, 1)[None]
        k = max(3, (albedo.shape[1] // 16) | 1)
        for _ in range(3):
            x = F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, stride=1)
        return (0.5 * x[0].permute(1, 2, 0) + 0.25).contiguous()
    raise ValueError(kind)


def with_texture(mesh: Mesh, albedo: torch.Tensor) -> Mesh:
    return Mesh(v=mesh.v, f=mesh.f, vn=mesh.vn, vt=mesh.vt, albedo=albedo)


def key_values(items: list[str]) -> dict:
    """``key=value`` strings -> dict, values parsed as JSON when they are JSON (numbers, true/false), else strings."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def make_stage(mesh: Mesh, folder: Path, prior, args: argparse.Namespace,
               reference: ReferenceImage | None = None) -> TextureStage:
    views = ViewSampler(batch_size=args.batch_size, resolution=args.size, invert_bg_prob=0.0, seed=args.seed)
    return TextureStage(mesh=mesh, reference=reference or load_reference(folder), prior=prior,
                        rasterizer=build_mesh_rasterizer(args.renderer), steps=args.steps, ref_size=args.ref_size,
                        views=views, refine_steps=50, log_images_every_n_steps=0, seed=args.seed,
                        **key_values(args.stage2))


def fit(stage: TextureStage, device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process summed over its threads) of ``trainer.fit``."""
    trainer = L.Trainer(max_steps=stage.steps, max_epochs=-1, accelerator=device.type, devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        inference_mode=False, num_sanity_val_steps=0)
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.fit(stage)
    return time.perf_counter() - t0, time.process_time() - c0


@torch.no_grad()
def evaluate(stage: TextureStage, gt: Mesh, size: int) -> tuple[float, float]:
    """Mean PSNR over EVAL_VIEWS: full image on white, and over pixels covered by the object (truth or render)."""
    full, obj = [], []
    refined = stage.export_mesh().to(stage.device)
    for e, a in EVAL_VIEWS:
        cam = orbit(e, float(a), stage.radius, fovy_deg=stage.fovy_deg, width=size, height=size)
        mine = render_mesh(refined, cam, stage.rasterizer, 1.0)
        truth = render_mesh(gt, cam, stage.rasterizer, 1.0)
        mask = ((truth.alpha > 0) | (mine.alpha > 0)).float()
        full.append(psnr(mine.image, truth.image))
        obj.append(psnr(mine.image, truth.image, mask))
    return float(np.mean(full)), float(np.mean(obj))


COARSE_VIEWS = [(e, float(a)) for e in (0.0, -30.0) for a in np.linspace(0, 360, 8, endpoint=False)]


@torch.no_grad()
def error_split(pred: Mesh, gt: Mesh, rasterizer, size: int) -> dict:
    """PSNR over COARSE_VIEWS (the oracle benchmark's) and each coverage region's share of the mean squared error."""
    white = torch.ones(3)
    sse = {"both": 0.0, "ours_only": 0.0, "truth_only": 0.0}
    mses = []
    for e, a in COARSE_VIEWS:
        cam = orbit(e, a, width=size, height=size)
        mine, truth = render_mesh(pred, cam, rasterizer, white), render_mesh(gt, cam, rasterizer, white)
        err = ((mine.image - truth.image) ** 2).mean(0)
        mses.append(float(err.mean()))
        ours, true = mine.alpha[0] > 0.5, truth.alpha[0] > 0.5
        for key, m in (("both", ours & true), ("ours_only", ours & ~true), ("truth_only", ~ours & true)):
            sse[key] += float(err[m].sum()) / (size * size * len(COARSE_VIEWS))
    return {"psnr": 10 * math.log10(1 / float(np.mean(mses))), **sse}


def run_coarse(name: str, args: argparse.Namespace, device: torch.device, run: str | None = None) -> dict:
    from PIL import Image

    from cg_lightning.priors.noisy_oracle import NoisyOraclePrior

    job = Path(run or args.run)
    gt = Mesh.load(DATA / name / "model.glb")
    coarse = Mesh.load(job / "mesh" / "coarse.glb")
    rgba = np.asarray(Image.open(job / "input" / "reference_rgba.png").convert("RGBA"))
    cls = NoisyOraclePrior if args.noisy else OraclePrior
    prior = cls(mesh_path=str(DATA / name / "model.glb"), resolution=args.oracle_resolution,
                rasterizer=args.renderer, **key_values(args.oracle))
    torch.manual_seed(args.seed)
    stage = make_stage(coarse.to(device), DATA / name, prior, args, ReferenceImage.from_rgba(rgba, elevation=0.0))
    ras = build_mesh_rasterizer(args.renderer)
    before = error_split(coarse, gt, ras, args.eval_size)
    seconds, cpu = fit(stage, device)
    after = error_split(stage.export_mesh(), gt, ras, args.eval_size)
    return {"object": name, "time_s": seconds, "cpu_s": cpu, "before": before, "after": after}


def run_speed(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    from cg_lightning.priors.tiny import TinyZero123Prior

    folder = DATA / name
    gt = Mesh.load(folder / "model.glb")
    n = args.texture_size
    tex = F.interpolate(gt.albedo.permute(2, 0, 1)[None], size=(n, n), mode="bilinear", align_corners=False)
    mesh = with_texture(gt, tex[0].permute(1, 2, 0).clamp(0, 1)).to(device)
    prior = TinyZero123Prior(seed=0, cache_dir=args.cache_dir)
    prior.setup(device)  # build/load the tiny model outside the timed loop
    stage = make_stage(mesh, folder, prior, args)
    seconds, cpu = fit(stage, device)
    return {"object": name, "faces": gt.num_faces, "texture": f"{n}x{n}", "steps": args.steps, "px": args.size,
            "time_s": seconds, "cpu_s": cpu, "s_per_step": seconds / args.steps}


def run_quality(name: str, init: str, args: argparse.Namespace, device: torch.device) -> dict:
    folder = DATA / name
    gt = Mesh.load(folder / "model.glb").to(device)
    prior = OraclePrior(mesh_path=str(folder / "model.glb"), resolution=args.oracle_resolution,
                        rasterizer=args.renderer)
    stage = make_stage(with_texture(gt, degrade(gt.albedo, init)), folder, prior, args).to(device)
    before = evaluate(stage, gt, args.eval_size)
    seconds, _ = fit(stage, device)
    after = evaluate(stage, gt, args.eval_size)
    return {"object": name, "init": init, "time_s": seconds, "before": before, "after": after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["speed", "quality", "both", "coarse"], default="both")
    parser.add_argument("--run", default=None, help="coarse part: the job directory of a finished oracle run")
    parser.add_argument("--runs", nargs="+", default=None, help="coarse part: OBJECT=JOB_DIR for several objects")
    parser.add_argument("--noisy", action="store_true", help="coarse part: the imperfect oracle (oracle_noisy)")
    parser.add_argument("--stage2", nargs="*", default=[], help="TextureStage arguments key=value")
    parser.add_argument("--oracle", nargs="*", default=[], help="OraclePrior arguments key=value")
    parser.add_argument("--objects", nargs="+", default=None, help="default: speed on sphere, quality on all")
    parser.add_argument("--inits", nargs="+", default=["grey", "washed"], choices=["grey", "washed"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", type=int, default=512, help="novel-view render size (DG 512, CG 1024)")
    parser.add_argument("--ref-size", type=int, default=256, help="reference-view size (DG 256, CG 1024)")
    parser.add_argument("--batch-size", type=int, default=1, help="novel views per step (DG 1, CG 2)")
    parser.add_argument("--texture-size", type=int, default=1024, help="speed part: texture resolution")
    parser.add_argument("--oracle-resolution", type=int, default=256, help="oracle render size (Zero123: 256)")
    parser.add_argument("--eval-size", type=int, default=256)
    parser.add_argument("--renderer", default="torch")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    parser.add_argument("--cache-dir", default=None, help="where the tiny Zero123 is built (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tmp = None
    if args.cache_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_stage2_")
        args.cache_dir = tmp.name
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device={device} threads={torch.get_num_threads()} cores={os.cpu_count()} load={load:.1f} "
          f"renderer={args.renderer} steps={args.steps} render={args.size}px ref={args.ref_size}px "
          f"batch={args.batch_size}")

    if args.part in ("speed", "both"):
        rows = [run_speed(name, args, device) for name in (args.objects or ["sphere"])]
        header = (f"{'object':8} {'faces':>6} {'texture':>9} {'steps':>5} {'px':>5} {'wall s':>7} {'cpu s':>7} "
                  f"{'s/step':>7} target")
        print("\nspeed (tiny Zero123 prior)\n" + header + "\n" + "-" * len(header))
        for r in rows:
            ok = "ok" if r["time_s"] <= 120 else "MISSED (<=120 s)"
            print(f"{r['object']:8} {r['faces']:6d} {r['texture']:>9} {r['steps']:5d} {r['px']:5d} {r['time_s']:7.1f} "
                  f"{r['cpu_s']:7.1f} {r['s_per_step']:7.3f} {ok}")

    if args.part in ("quality", "both"):
        rows = [run_quality(name, init, args, device)
                for name in (args.objects or ["box", "sphere", "torus"]) for init in args.inits]
        header = (f"{'object':8} {'init':7} {'time s':>7} {'PSNR before':>11} {'PSNR after':>10} "
                  f"{'obj PSNR before':>15} {'obj PSNR after':>14}")
        print(f"\nquality (oracle prior, {len(EVAL_VIEWS)} views at {args.eval_size}px)\n" + header + "\n"
              + "-" * len(header))
        for r in rows:
            print(f"{r['object']:8} {r['init']:7} {r['time_s']:7.1f} {r['before'][0]:11.2f} {r['after'][0]:10.2f} "
                  f"{r['before'][1]:15.2f} {r['after'][1]:14.2f}")
    if args.part == "coarse":
        if args.runs:
            jobs = [tuple(item.split("=", 1)) for item in args.runs]
        elif args.run is not None and args.objects and len(args.objects) == 1:
            jobs = [(args.objects[0], args.run)]
        else:
            parser.error("--part coarse needs --runs OBJECT=JOB_DIR ... or --run JOB_DIR and --objects <its object>")
        kind = "imperfect (oracle_noisy)" if args.noisy else "perfect"
        print(f"\ncoarse -> final, {kind} oracle; stage2 {args.stage2} oracle {args.oracle}")
        header = (f"{'object':8} {'coarse PSNR':>11} {'final PSNR':>10} {'gain dB':>7} {'MSE both':>17} "
                  f"{'MSE ours only':>17} {'MSE truth only':>17} {'wall s':>6} {'cpu s':>6}")
        print(header + "\n" + "-" * len(header))
        for name, run in jobs:
            r = run_coarse(name, args, device, run)
            b, a = r["before"], r["after"]
            print(f"{name:8} {b['psnr']:11.2f} {a['psnr']:10.2f} {a['psnr'] - b['psnr']:+7.2f} "
                  f"{b['both']:8.5f}>{a['both']:8.5f} {b['ours_only']:8.5f}>{a['ours_only']:8.5f} "
                  f"{b['truth_only']:8.5f}>{a['truth_only']:8.5f} {r['time_s']:6.1f} {r['cpu_s']:6.1f}", flush=True)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
