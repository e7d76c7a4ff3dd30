"""Score baselines with the pipeline's metrics, as job directories the table builder reads.

  # Shap-E image-to-3D (diffusers ShapEImg2ImgPipeline, openai/shap-e-img2img), one job per image:
  python experiments/run_baseline.py shap-e --image experiments/images/*_rgba.png
  # a mesh made by another method (One-2-3-45, Zero-1-to-3, ...); {stem} = image stem, {name} = stem minus _rgba:
  python experiments/run_baseline.py external --name one2345 --mesh 'one2345_out/{name}/mesh.ply' \
      --front +z --up +y --image experiments/images/*_rgba.png --time-s 45

Trailing ``key=value`` arguments are Hydra overrides of the project config (the same preprocessing and evaluation
settings as ``launch.py``), e.g. ``device=cuda evaluation.clip.model=/models/clip-bigG``.
Jobs go to ``<paths.output_root>/<image-stem>/{shap_e|external_<name>}/seed<seed>/``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("run_baseline")


def compose_config(image: str, overrides: list[str]):
    """The project config for ``image`` + ``overrides``, with Hydra's runtime values set as in a real run."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import cg_lightning.config  # noqa: F401  (resolvers + schemas)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"image={image}", *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.cwd = os.getcwd()
        cfg.hydra.runtime.output_dir = os.getcwd()
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)

    def common(sp: argparse.ArgumentParser, front: str, up: str) -> None:
        sp.add_argument("--image", nargs="+", required=True, help="input image(s), as given to launch.py")
        sp.add_argument("--elevation", type=float, default=None, help="input elevation (default: config `elevation`)")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--output-root", default=None, help="default: config paths.output_root (./outputs)")
        sp.add_argument("--no-preprocess", action="store_true",
                        help="use the image as the reference as it is (already cut out and recentred)")
        sp.add_argument("--front", default=front, help=f"mesh axis facing the viewer of the input (default {front})")
        sp.add_argument("--up", default=up, help=f"mesh up axis (default {up})")
        sp.add_argument("--yaw", type=float, default=0.0, help="extra turn about +y (degrees) after --front/--up")
        sp.add_argument("--fit", choices=["silhouette", "box", "none"], default="silhouette",
                        help="silhouette: scale/shift to the input's silhouette (default); box: unit box only; "
                             "none: use the mesh's coordinates as they are")
        sp.add_argument("--auto-yaw", action="store_true",
                        help="try 4 yaws (0/90/180/270) and keep the lowest reference-view LPIPS")
        sp.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. device=cuda")

    s = sub.add_parser("shap-e", help="Shap-E image-to-3D through diffusers")
    common(s, "+z", "+y")
    s.add_argument("--weights", default="openai/shap-e-img2img", help="Hub id or local save_pretrained folder")
    s.add_argument("--steps", type=int, default=64)
    s.add_argument("--guidance", type=float, default=3.0)
    s.add_argument("--dtype", choices=["auto", "float16", "float32"], default="auto")

    e = sub.add_parser("external", help="score a mesh produced elsewhere")
    common(e, "+z", "+y")
    e.add_argument("--name", required=True, help="method name; jobs go to external_<name>/")
    e.add_argument("--mesh", required=True,
                   help="mesh file (.obj/.glb/.ply); with several images use {stem} / {name} placeholders")
    e.add_argument("--time-s", type=float, default=None, help="the method's generation time per image (seconds)")
    return p


def _mesh_for(pattern: str, image: str) -> str:
    stem = Path(image).stem
    name = stem[:-5] if stem.endswith("_rgba") else stem
    return pattern.replace("{stem}", stem).replace("{name}", name)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # `--image a.png b.png device=cuda`: argparse gives the overrides to --image; move them back
    args.overrides = list(args.overrides) + [a for a in args.image if "=" in a]
    args.image = [a for a in args.image if "=" not in a]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from hydra.utils import instantiate

    from cg_lightning.errors import CGError
    from cg_lightning.evaluation.baselines import Alignment, ShapEImageTo3D, run_shap_e, score_external_mesh
    from cg_lightning.runtime.device import resolve_device

    if args.mode == "external" and len(args.image) > 1 and "{" not in args.mesh:
        print("Error: several images need a --mesh pattern with {stem} or {name}", file=sys.stderr)
        return 2
    failures = 0
    model = None
    try:
        alignment = Alignment(front=args.front, up=args.up, fit=args.fit, auto_yaw=args.auto_yaw, yaw_deg=args.yaw)
    except CGError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    for image in args.image:
        try:
            cfg = compose_config(image, list(args.overrides))
            device = resolve_device(str(cfg.device))
            preprocess = None if args.no_preprocess else instantiate(cfg.preprocess)
            elevation = float(cfg.elevation if args.elevation is None else args.elevation)
            root = args.output_root or str(cfg.paths.output_root)
            if args.mode == "shap-e":
                if model is None:
                    model = ShapEImageTo3D(weights=args.weights, steps=args.steps, guidance_scale=args.guidance,
                                           dtype=args.dtype)
                out, metrics = run_shap_e(image, output_root=root, cfg_eval=cfg.evaluation, device=device,
                                          preprocess=preprocess, model=model, elevation_deg=elevation,
                                          seed=args.seed, alignment=alignment)
            else:
                out, metrics = score_external_mesh(_mesh_for(args.mesh, image), image, name=args.name,
                                                   output_root=root, cfg_eval=cfg.evaluation, device=device,
                                                   preprocess=preprocess, elevation_deg=elevation,
                                                   alignment=alignment, time_s=args.time_s, seed=args.seed)
            log.info("%s: LPIPS %.4f  CLIP %.4f -> %s", image, metrics["eval/lpips"],
                     metrics["eval/clip_similarity"], out)
        except CGError as exc:
            failures += 1
            print(f"\nError ({image}): {exc}\n", file=sys.stderr)
        except Exception:  # noqa: BLE001 - a crash on one image is recorded (FAILED) and the batch goes on
            failures += 1
            log.exception("crash while scoring %s (recorded in the job's FAILED file)", image)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
