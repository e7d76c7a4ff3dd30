"""Table I rows that are not our pipeline: Shap-E (through diffusers) and any mesh produced elsewhere.

Each baseline becomes a job directory with the pipeline's layout (``<root>/<image-stem>/<name>/seed<seed>/`` with
``input/preprocessed_rgba.png``, ``metrics.json``, ``DONE``/``FAILED``), so the table builder treats it like any
other experiment. The reference image is the pipeline's own preprocessing of the input (background removal +
recentring at 256 px, before super-resolution), so every row is scored against the same pixels.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from cg_lightning.errors import ConfigError, InputImageError, MissingWeightsError, WrongWeightsError
from cg_lightning.evaluation.memory import PeakMemory
from cg_lightning.evaluation.mesh_view import (
    ScorableMesh,
    axis_rotation,
    fit_to_reference,
    load_scorable_mesh,
    normalize_to_box,
    yaw_rotation,
)
from cg_lightning.preprocess.image_io import save_image
from cg_lightning.utils.atomic import atomic_path, write_text

log = logging.getLogger(__name__)

SHAP_E_REPO = "openai/shap-e-img2img"
SHAP_E_PATTERNS = ["model_index.json", "prior/*", "image_encoder/*", "image_processor/*", "scheduler/*",
                   "shap_e_renderer/*", "renderer/*"]
FIT_MODES = ("silhouette", "box", "none")


# ---------------------------------------------------------------------------------------------- job files
def job_dir(output_root: str | os.PathLike, image_stem: str, experiment: str, seed: int = 0) -> Path:
    """``<root>/<stem>/<experiment>/seed<seed>`` (the pipeline's layout)."""
    return Path(output_root) / image_stem / experiment / f"seed{int(seed)}"


def external_experiment_name(name: str) -> str:
    """Directory name of an external method: ``external_<name>`` (the table shows ``external:<name>``)."""
    clean = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name)).strip("_")
    if not clean:
        raise ConfigError(f"external method name {name!r} is empty after sanitising; use letters/digits/-/_")
    return f"external_{clean}"


def prepare_reference(image: str | os.PathLike, preprocess: Callable[[np.ndarray], np.ndarray] | None,
                      out_dir: Path) -> tuple[np.ndarray, float]:
    """Load + preprocess the input (None: use it as it is), save ``input/preprocessed_rgba.png``; (rgba, seconds)."""
    from cg_lightning.preprocess.image_io import load_image

    t0 = time.perf_counter()
    img = load_image(image)
    if preprocess is not None:
        rgba = preprocess(img)
    else:
        rgba = img if img.shape[-1] == 4 else np.concatenate([img, np.full_like(img[..., :1], 255)], axis=-1)
    rgba = np.ascontiguousarray(rgba, dtype=np.uint8)
    seconds = time.perf_counter() - t0
    save_image(out_dir / "input" / "preprocessed_rgba.png", rgba)
    return rgba, seconds


def save_scorable_glb(sm: ScorableMesh, path: Path) -> Path:
    """Write the (aligned) mesh: textured through our exporter, vertex-coloured through trimesh (COLOR_0)."""
    if sm.textured:
        from cg_lightning.mesh.export import write_glb

        write_glb(sm.mesh.to("cpu"), path)
        return path
    import trimesh

    colors = (sm.vertex_colors.detach().cpu().clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    tm = trimesh.Trimesh(vertices=sm.mesh.v.detach().cpu().numpy(), faces=sm.mesh.f.cpu().numpy(),
                         vertex_colors=colors, process=False)
    with atomic_path(path) as tmp:
        tm.export(str(tmp), file_type="glb")
    return path


def write_metrics_json(out_dir: Path, metrics: dict[str, Any]) -> Path:
    path = out_dir / "metrics.json"
    write_text(path, json.dumps(metrics, indent=2, sort_keys=True))
    return path


# ---------------------------------------------------------------------------------------------- alignment
@dataclass
class Alignment:
    """How a foreign mesh is put into our frame before scoring (see :mod:`cg_lightning.evaluation.mesh_view`)."""

    front: str = "+z"
    up: str = "+y"
    fit: str = "silhouette"       # silhouette | box | none
    auto_yaw: bool = False        # try yaw 0/90/180/270 and keep the lowest reference-view LPIPS
    yaw_deg: float = 0.0
    half_extent: float = 0.5      # box size after normalisation (before the silhouette fit)

    def __post_init__(self) -> None:
        if self.fit not in FIT_MODES:
            raise ConfigError(f"fit={self.fit!r}; expected one of {FIT_MODES}")
        axis_rotation(self.front, self.up)  # validates the axes


def align_mesh(sm: ScorableMesh, reference_rgba: np.ndarray, rasterizer, cfg_eval: DictConfig,
               elevation_deg: float, alignment: Alignment, lpips_model: Any = None) -> tuple[ScorableMesh, dict]:
    """Axis change, yaw, normalisation and silhouette fit; with ``auto_yaw`` the best of four yaws (by LPIPS)."""
    from cg_lightning.evaluation.metrics import lpips_reference_view

    base = sm.transformed(linear=axis_rotation(alignment.front, alignment.up))
    yaws = [alignment.yaw_deg + k * 90.0 for k in range(4)] if alignment.auto_yaw else [alignment.yaw_deg]
    best: tuple[float, ScorableMesh, dict] | None = None
    for yaw in yaws:
        cand = base.transformed(linear=yaw_rotation(yaw))
        info: dict[str, float] = {"align/yaw_deg": float(yaw % 360.0)}
        if alignment.fit != "none":
            cand = normalize_to_box(cand, alignment.half_extent)
        if alignment.fit == "silhouette":
            cand, fit_info = fit_to_reference(cand, reference_rgba, rasterizer, elevation_deg=elevation_deg,
                                              radius=float(cfg_eval.radius), fovy_deg=float(cfg_eval.fovy),
                                              size=int(cfg_eval.size))
            info.update(fit_info)
        if len(yaws) == 1:
            return cand, info
        score = lpips_reference_view(cand.render_fn(rasterizer), reference_rgba, lpips_model,
                                     elevation_deg=elevation_deg, size=int(cfg_eval.size),
                                     radius=float(cfg_eval.radius), fovy_deg=float(cfg_eval.fovy))
        if best is None or score < best[0]:
            best = (score, cand, info)
    assert best is not None
    return best[1], best[2]


# ---------------------------------------------------------------------------------------------- external meshes
def score_external_mesh(mesh_path: str | os.PathLike, image: str | os.PathLike, *, name: str,
                        output_root: str | os.PathLike, cfg_eval: DictConfig, device: torch.device | str,
                        preprocess: Callable[[np.ndarray], np.ndarray] | None, elevation_deg: float = 0.0,
                        alignment: Alignment | None = None, time_s: float | None = None, seed: int = 0,
                        rasterizer: Any = None) -> tuple[Path, dict[str, Any]]:
    """Score a mesh made by another method against ``image``; writes ``<root>/<stem>/external_<name>/seed<seed>``.

    ``time_s`` is the other method's generation time (we cannot measure it); it becomes ``time/total_s``.
    """
    from cg_lightning.config.resolvers import image_stem
    from cg_lightning.evaluation.metrics import build_eval_models, evaluate_mesh
    from cg_lightning.render.mesh import build_mesh_rasterizer
    from cg_lightning.runtime.task import job_guard

    alignment = alignment or Alignment()
    dev = torch.device(device)
    out = job_dir(output_root, image_stem(str(image)), external_experiment_name(name), seed)
    metrics: dict[str, Any] = {}
    with job_guard(out, continue_on_error=False):
        if not Path(mesh_path).is_file():
            raise InputImageError(f"mesh file not found: {mesh_path}")
        rgba, _ = prepare_reference(image, preprocess, out)
        rast = rasterizer if rasterizer is not None else build_mesh_rasterizer(str(cfg_eval.get("mesh_renderer",
                                                                                                 "auto")))
        models = build_eval_models(cfg_eval, dev)
        sm = load_scorable_mesh(mesh_path).to(dev)
        sm, info = align_mesh(sm, rgba, rast, cfg_eval, elevation_deg, alignment, lpips_model=models.lpips)
        save_scorable_glb(sm, out / "mesh" / "aligned.glb")
        metrics.update(evaluate_mesh(sm, rgba, cfg_eval=cfg_eval, device=dev, elevation_deg=elevation_deg,
                                     rasterizer=rast, models=models))
        metrics.update(info)
        if time_s is not None:
            metrics["time/total_s"] = float(time_s)
        metrics.update({"baseline/method": f"external:{name}", "baseline/source_mesh": str(Path(mesh_path)),
                        "eval/scored_mesh": "mesh/aligned.glb", "seed": int(seed), "elevation": float(elevation_deg),
                        "image": str(image)})
        write_metrics_json(out, metrics)
    return out, metrics


# ---------------------------------------------------------------------------------------------- Shap-E
def linear_to_srgb(x: Tensor) -> Tensor:
    """Inverse of the sRGB -> linear conversion diffusers applies to Shap-E's mesh colours."""
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(1e-12) ** (1.0 / 2.4) - 0.055).clamp(0.0, 1.0)


class ShapEImageTo3D:
    """Shap-E image-to-3D (``ShapEImg2ImgPipeline``, output_type="mesh") returning a vertex-coloured mesh.

    ``weights``: a Hub id (resolved in the HF cache; downloaded when online) or a local ``save_pretrained`` folder.
    Defaults follow diffusers' Shap-E example: 64 steps, guidance 3.0. The decoded mesh lives in Shap-E's z-up
    frame with colours converted to linear RGB by diffusers; :meth:`generate` converts both back (sRGB colours,
    y-up, the Hugging Face Shap-E demo's orientation) before any alignment.
    """

    def __init__(self, weights: str = SHAP_E_REPO, steps: int = 64, guidance_scale: float = 3.0,
                 dtype: str = "auto") -> None:
        if int(steps) < 1:
            raise ConfigError(f"shap-e steps={steps} must be >= 1")
        if dtype not in ("auto", "float16", "float32"):
            raise ConfigError(f"shap-e dtype={dtype!r}; expected auto, float16 or float32")
        self.weights, self.steps, self.guidance_scale = str(weights), int(steps), float(guidance_scale)
        self.dtype = dtype
        self.pipe = None
        self.device: torch.device | None = None

    def _resolve(self) -> str:
        local = Path(self.weights).expanduser()
        if local.exists():
            if not (local / "model_index.json").is_file():
                raise MissingWeightsError(f"Shap-E pipeline ({local} has no model_index.json)", str(local),
                                          "pass the folder written by ShapEImg2ImgPipeline.save_pretrained or a "
                                          f"snapshot of https://huggingface.co/{SHAP_E_REPO}")
            return str(local)
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", self.weights):  # not "owner/name": a local folder that is missing
            raise MissingWeightsError(f"Shap-E pipeline (folder {local} does not exist)", str(local),
                                      f"download https://huggingface.co/{SHAP_E_REPO} there, or pass the Hub id")
        from cg_lightning.weights import resolve_hf_snapshot

        return str(resolve_hf_snapshot(self.weights, SHAP_E_PATTERNS, f"Shap-E image-to-3D ({self.weights})",
                                       required=["model_index.json", "prior", "image_encoder"],
                                       fetch_hint=f"huggingface-cli download {self.weights}"))

    def setup(self, device: torch.device | str) -> None:
        if self.pipe is not None:
            return
        dev = torch.device(device)
        folder = self._resolve()  # before importing diffusers: missing weights fail fast
        from diffusers import ShapEImg2ImgPipeline

        half = self.dtype == "float16" or (self.dtype == "auto" and dev.type == "cuda")
        try:
            pipe = ShapEImg2ImgPipeline.from_pretrained(folder, torch_dtype=torch.float16 if half else torch.float32)
        except (OSError, ValueError, KeyError) as exc:
            raise WrongWeightsError(f"{folder} does not hold a loadable ShapEImg2ImgPipeline ({exc}); re-download "
                                    f"https://huggingface.co/{SHAP_E_REPO}") from exc
        pipe.set_progress_bar_config(disable=True)
        self.pipe, self.device = pipe.to(dev), dev

    @torch.no_grad()
    def generate(self, rgba: np.ndarray, seed: int = 0) -> ScorableMesh:
        """Mesh for the RGBA input (composited on white, as the pipeline sees it), in our y-up frame."""
        from PIL import Image

        from cg_lightning.mesh.mesh import Mesh

        if self.pipe is None or self.device is None:
            raise RuntimeError("call setup(device) before generate()")
        a = rgba[..., 3:4].astype(np.float32) / 255.0
        rgb = (rgba[..., :3].astype(np.float32) * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        out = self.pipe(Image.fromarray(rgb), num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
                        generator=gen, output_type="mesh")
        decoded = out.images[0]
        v = decoded.verts.detach().float().cpu()
        f = decoded.faces.detach().long().cpu()
        if v.shape[0] == 0 or f.shape[0] == 0:
            raise InputImageError("Shap-E produced an empty mesh for this image")
        colors = torch.stack([decoded.vertex_channels[c].detach().float().cpu() for c in "RGB"], dim=1)
        # z-up -> y-up with the HF demo's turn: (x, y, z) -> (-x, z, y); a proper rotation (det = +1)
        to_ours = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
        mesh = Mesh(v=v @ to_ours.T, f=f).auto_normals()
        return ScorableMesh(mesh, linear_to_srgb(colors))


def run_shap_e(image: str | os.PathLike, *, output_root: str | os.PathLike, cfg_eval: DictConfig,
               device: torch.device | str, preprocess: Callable[[np.ndarray], np.ndarray] | None,
               model: ShapEImageTo3D, elevation_deg: float = 0.0, seed: int = 0,
               alignment: Alignment | None = None, rasterizer: Any = None) -> tuple[Path, dict[str, Any]]:
    """Shap-E on one image -> ``<root>/<stem>/shap_e/seed<seed>`` with the mesh and ``metrics.json``.

    Times: ``time/input_s`` (preprocessing), ``time/generate_s`` (model loading excluded: it is shared by all
    images of a sweep), ``time/total_s`` = both; peak memory of generation under ``memory/*``.
    """
    from cg_lightning.config.resolvers import image_stem
    from cg_lightning.evaluation.metrics import build_eval_models, evaluate_mesh
    from cg_lightning.render.mesh import build_mesh_rasterizer
    from cg_lightning.runtime.task import job_guard

    alignment = alignment or Alignment()
    dev = torch.device(device)
    out = job_dir(output_root, image_stem(str(image)), "shap_e", seed)
    metrics: dict[str, Any] = {}
    with job_guard(out, continue_on_error=False):
        rgba, input_s = prepare_reference(image, preprocess, out)
        model.setup(dev)
        with PeakMemory(dev) as mem:
            t0 = time.perf_counter()
            sm = model.generate(rgba, seed=seed)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            generate_s = time.perf_counter() - t0
        save_scorable_glb(sm, out / "mesh" / "shap_e_raw.glb")
        rast = rasterizer if rasterizer is not None else build_mesh_rasterizer(str(cfg_eval.get("mesh_renderer",
                                                                                                 "auto")))
        models = build_eval_models(cfg_eval, dev)
        sm, info = align_mesh(sm.to(dev), rgba, rast, cfg_eval, elevation_deg, alignment, lpips_model=models.lpips)
        save_scorable_glb(sm, out / "mesh" / "aligned.glb")
        metrics.update(evaluate_mesh(sm, rgba, cfg_eval=cfg_eval, device=dev, elevation_deg=elevation_deg,
                                     rasterizer=rast, models=models))
        metrics.update(info)
        metrics.update(mem.as_dict())
        metrics.update({"time/input_s": input_s, "time/generate_s": generate_s, "time/total_s": input_s + generate_s,
                        "baseline/method": "shap_e", "baseline/weights": model.weights,
                        "eval/scored_mesh": "mesh/aligned.glb", "seed": int(seed), "elevation": float(elevation_deg),
                        "image": str(image)})
        write_metrics_json(out, metrics)
    return out, metrics
