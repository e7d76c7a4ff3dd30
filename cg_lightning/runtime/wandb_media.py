"""The W&B media of one job, built from its output files: input pair, evaluation renders, metrics table.

Why from the files: they are what the job produced and what the table builder reads, so the run shows exactly the
images that were scored (the evaluation renders use the evaluation's own cameras, renderer and reference image).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from cg_lightning.runtime.layout import JobLayout

THUMBNAIL = 128


def _read_rgba(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGBA")).copy()


def _on_white(rgba: np.ndarray) -> np.ndarray:
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    return (rgba[..., :3].astype(np.float32) * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)


def _layouts(cfg: DictConfig, output_dir: Path) -> list[JobLayout]:
    layouts = [JobLayout(Path(output_dir))]
    if cfg.get("from_run"):
        layouts.append(JobLayout(Path(str(cfg.from_run))))
    return layouts


def _find(cfg: DictConfig, output_dir: Path, attr: str) -> Path | None:
    for layout in _layouts(cfg, output_dir):
        path = getattr(layout, attr)
        if path.is_file():
            return path
    return None


def input_images(output_dir: Path) -> dict[str, Any]:
    """``input/preprocessed`` (background removed, recentred: what every variant is scored against) and
    ``input/reference`` (after super-resolution: what the stages fit)."""
    import wandb

    layout = JobLayout(Path(output_dir))
    out: dict[str, Any] = {}
    for key, path, what in (("input/preprocessed", layout.preprocessed, "preprocessed (scoring reference)"),
                            ("input/reference", layout.reference, "reference the stages fit (after SR)")):
        if path.is_file():
            rgba = _read_rgba(path)
            out[key] = wandb.Image(_on_white(rgba), caption=f"{what}, {rgba.shape[1]}x{rgba.shape[0]}")
    return out


def thumbnail(cfg: DictConfig, output_dir: Path) -> Any:
    """The preprocessed input as a small ``wandb.Image`` (None when the input step never ran)."""
    import wandb
    from PIL import Image

    path = _find(cfg, output_dir, "preprocessed")
    if path is None:
        return None
    image = Image.fromarray(_on_white(_read_rgba(path)))
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    return wandb.Image(np.asarray(image))


def _grid(rows: list[list[np.ndarray]]) -> np.ndarray:
    """uint8 tiles (H,W,3) of one size, row by row, on a grey background (short rows are padded)."""
    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    pad = 2
    out = np.full(((h + pad) * len(rows) + pad, (w + pad) * cols + pad, 3), 128, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y:y + h, x:x + w] = tile
    return out


def _to_uint8(image) -> np.ndarray:
    return (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def _render_views(render, cfg: DictConfig, size: int) -> tuple[np.ndarray, list[np.ndarray], list[float]]:
    """The LPIPS view and the CLIP views of ``render`` with the evaluation's cameras, resized to ``size``."""
    import torch
    import torch.nn.functional as F

    from cg_lightning.cameras import orbit
    from cg_lightning.evaluation.metrics import _clip_camera, clip_azimuths

    ev = cfg.evaluation

    def shot(camera) -> np.ndarray:
        with torch.no_grad():
            img = render(camera)
            img = img[None] if img.dim() == 3 else img
            img = F.interpolate(img.float(), size=(size, size), mode="bilinear", align_corners=False)
        return _to_uint8(img[0])

    front = shot(orbit(float(cfg.elevation), 0.0, radius=float(ev.radius), fovy_deg=float(ev.fovy),
                       width=int(ev.size), height=int(ev.size)))
    radius, fovy, clip_size = _clip_camera(ev)
    azimuths = clip_azimuths(int(ev.views))
    views = [shot(orbit(float(ev.elevation), az, radius=radius, fovy_deg=fovy, width=clip_size, height=clip_size))
             for az in azimuths]
    return front, views, azimuths


def evaluation_renders(cfg: DictConfig, output_dir: Path, size: int = 256) -> dict[str, Any]:
    """``eval/renders`` (the scored mesh) and ``eval/stage1_renders`` (the Gaussians): first row the input and the
    LPIPS view, second row the CLIP views; the same cameras and renderers as :mod:`cg_lightning.steps.evaluate`."""
    import torch
    import wandb
    from PIL import Image

    from cg_lightning.runtime.device import resolve_device

    pre = _find(cfg, output_dir, "preprocessed")
    if pre is None:
        return {}
    device = resolve_device(str(cfg.get("device", "auto")))
    reference = np.asarray(Image.fromarray(_on_white(_read_rgba(pre))).resize((size, size), Image.BILINEAR))
    out: dict[str, Any] = {}
    glb = _find(cfg, output_dir, "model_glb") or _find(cfg, output_dir, "coarse_glb")
    if glb is not None:
        from cg_lightning.evaluation.mesh_view import ScorableMesh
        from cg_lightning.mesh.mesh import Mesh
        from cg_lightning.render.mesh import build_mesh_rasterizer

        rast = build_mesh_rasterizer(str(cfg.evaluation.get("mesh_renderer", "auto")))
        render = ScorableMesh.of(Mesh.load(glb)).to(device).render_fn(rast)
        front, views, az = _render_views(render, cfg, size)
        out["eval/renders"] = wandb.Image(_grid([[reference, front], views]), caption=(
            f"{glb.parent.name}/{glb.name}: input | LPIPS view (top); CLIP views at azimuths "
            f"{', '.join(f'{a:g}' for a in az)} (bottom)"))
    ply = _find(cfg, output_dir, "gaussians_ply")
    if ply is not None:
        from cg_lightning.gaussians.ply import load_ply
        from cg_lightning.render.gaussian import build_gaussian_rasterizer

        gaussians = load_ply(ply).to(device)
        rasterizer = build_gaussian_rasterizer(cfg.renderer.gaussian)
        white = torch.ones(3, device=device)
        front, views, az = _render_views(lambda cam: rasterizer.render(gaussians, cam.to(device), white).image,
                                         cfg, size)
        out["eval/stage1_renders"] = wandb.Image(_grid([[reference, front], views]), caption=(
            f"stage-1 Gaussians: input | LPIPS view (top); CLIP views at azimuths "
            f"{', '.join(f'{a:g}' for a in az)} (bottom)"))
    return out


def metrics_table(cfg: DictConfig, output_dir: Path, metrics: dict[str, Any], job: dict[str, Any]):
    """A one-row ``wandb.Table``: who the job is (image, experiment, variant, seed, scale, device), the input
    thumbnail and every numeric metric of ``metrics.json``."""
    import wandb

    numeric = {k: float(v) for k, v in sorted(metrics.items())
               if isinstance(v, int | float) and not isinstance(v, bool)}
    columns = ["job", "image", "experiment", "variant", "seed", "scale", "device", "input", *numeric]
    row = [job.get("relative_dir"), job.get("image_stem"), job.get("experiment"), job.get("variant") or "",
           job.get("seed"), job.get("scale"), job.get("device"), thumbnail(cfg, output_dir), *numeric.values()]
    return wandb.Table(columns=columns, data=[row])


def mesh_object(path: Path) -> Any:
    """A ``.glb`` mesh as a W&B 3-D object."""
    import wandb

    return wandb.Object3D(str(path))


def video(path: Path) -> Any:
    """An ``.mp4`` file as a W&B video."""
    import wandb

    return wandb.Video(str(path), format="mp4")
