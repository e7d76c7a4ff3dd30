"""Stage 2: refine the baked texture (and optionally nudge the vertices) of the coarse mesh.

DreamGaussian's ``main2.py`` as a LightningModule (reference §1.5 / §2.12). The trainable state is small and lives in
the checkpoint: the texture as logits (``raw_albedo = logit(albedo)``, so any Adam step keeps colours in (0, 1)) and,
with ``train_geo``, per-vertex offsets. The mesh itself is stored as buffers so a stage-2 checkpoint is a complete
textured mesh (export needs nothing else). The prior and the rasterizer are plain attributes and never enter it.

Per step, with ``r`` the training progress and a random render scale ``ssaa`` drawn for every render (DG/CG stage 2;
``ssaa_per: step`` shares one per step):
- reference view (front camera at the input's elevation, ``ref_size``): MSE between render and input, both multiplied
  by the mask ``alpha > 0 & viewcos > 0.5`` (only texels the input actually shows well);
- ``batch_size`` novel views (stage 1's sampler): ``refined = prior.refine(render, d_elev, d_azim, d_radius,
  strength = 0.8 + 0.15 r)`` without grad, bilinearly resized to the render size; MSE(render, refined).
Renders rasterize at ``ceil8(size * ssaa)`` and are resized back, so the texture is fitted across mip levels. As in
DG's mesh renderer, the texture *logits* are mip-filtered and the sigmoid applied after, the colour is antialiased and
composited with the binary coverage, and the resize back is DG's plain bilinear (``texture_filter_space``,
``silhouette`` and ``ssaa_resize`` switch to the smoother variants, see ``render_mesh``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from cg_lightning.cameras import Camera, orbit
from cg_lightning.data.reference import ReferenceImage
from cg_lightning.data.views import ViewBatch, ViewSampler, check_max_steps, view_dataloader
from cg_lightning.errors import ConfigError, NonFiniteError
from cg_lightning.losses.base import LossOutput, LossTerm
from cg_lightning.mesh.mesh import Mesh
from cg_lightning.schedules import LinearRamp, Schedule, as_schedule, step_ratio

log = logging.getLogger(__name__)

_LOGIT_EPS = 1e-6
LOG_PREFIX = "stage2"


# ---------------------------------------------------------------------------------------------------- helpers
def albedo_to_logits(albedo: Tensor) -> Tensor:
    """``logit(clamp(albedo, 1e-6, 1 - 1e-6))``: the unconstrained texture parameter."""
    return torch.logit(albedo.float().clamp(_LOGIT_EPS, 1.0 - _LOGIT_EPS))


FILTER_SPACES = ("logits", "albedo")
SSAA_PER = ("render", "step")
REF_MASKS = ("render", "render_and_input")


def sample_ssaa_scales(seed: int, step: int, count: int, low: float = 0.125, high: float = 2.0) -> list[float]:
    """``count`` of DreamGaussian's random render scales ``clamp(2 U[0,1), low, high)``, one per render of a step,
    a pure function of ``(seed, step)`` so a resumed run draws the same scales as an uninterrupted one."""
    u = np.random.default_rng([int(seed), int(step), 0x55AA]).random(int(count))
    return [min(high, max(low, 2.0 * float(x))) for x in u]


def sample_ssaa(seed: int, step: int, low: float = 0.125, high: float = 2.0) -> float:
    """The first scale of :func:`sample_ssaa_scales` (the one ``ssaa_per: step`` shares between all renders)."""
    return sample_ssaa_scales(seed, step, 1, low, high)[0]


@dataclass
class RenderResult:
    """Batched render at the requested size: image (B,3,H,W) on the background, alpha and viewcos (B,1,H,W)."""

    image: Tensor
    alpha: Tensor
    viewcos: Tensor


# ---------------------------------------------------------------------------------------------------- loss terms
@dataclass
class TextureLossContext:
    """What the stage-2 loss terms look at in one step (images (B,3,H,W) in [0,1])."""

    step: int
    total_steps: int
    ref_render: Tensor
    ref_target: Tensor
    ref_valid: Tensor
    novel_images: Tensor
    refined: Tensor | None


class MaskedReferenceMSE(LossTerm):
    """``MSE(render * m, input * m)`` with ``m = alpha > 0 & viewcos > 0.5`` (mean over all pixels, as DG)."""

    def forward(self, ctx: TextureLossContext, logs: dict[str, float]) -> Tensor:
        m = ctx.ref_valid.to(ctx.ref_render.dtype)
        logs["ref_mask_fraction"] = float(m.mean())
        return F.mse_loss(ctx.ref_render * m, ctx.ref_target * m)


class RefineMSE(LossTerm):
    """MSE between the novel-view renders and the prior's refinement of them (a fixed target, no grad)."""

    def forward(self, ctx: TextureLossContext, logs: dict[str, float]) -> Tensor:
        if ctx.refined is None:
            raise ConfigError("stage2: the refine loss needs a prior (stage2 prior is None)")
        return F.mse_loss(ctx.novel_images, ctx.refined)


# ---------------------------------------------------------------------------------------------------- the stage
def _build(node: Any, **kwargs: Any) -> Any:
    """Instantiate a ``_target_`` config node (the pipeline instantiates stages with ``_recursive_=False``)."""
    if isinstance(node, Mapping) or hasattr(node, "_get_node"):
        if "_target_" in node:
            from hydra.utils import instantiate

            return instantiate(node, **kwargs)
    return node


def _unwrap_structured(obj: Any) -> Any:
    """Undo Hydra's conversion of dataclass kwargs (Mesh, ReferenceImage) into structured DictConfigs.

    ``instantiate(cfg, mesh=Mesh(...))`` merges kwargs into the config, which turns dataclasses into DictConfig;
    ``OmegaConf.to_object`` rebuilds the original dataclass (tensors are kept by reference).
    """
    from omegaconf import DictConfig, OmegaConf

    if isinstance(obj, DictConfig) and OmegaConf.get_type(obj) not in (None, dict):
        return OmegaConf.to_object(obj)
    return obj


class TextureStage(pl.LightningModule):
    """Texture (and optional geometry) refinement of a UV-mapped mesh against the reference view and the prior.

    Args:
        mesh: the coarse mesh; needs ``vt``; ``albedo`` None -> a ``default_texture_size``² grey (0.5) texture.
        reference: the input view (RGB on white, alpha, elevation).
        prior: object with ``setup / set_reference / refine`` (may be None only when ``refine_weight`` is 0).
        rasterizer: a mesh rasterizer backend (``render_mesh`` is called with it).
        steps: optimisation steps (the pipeline sets ``Trainer(max_steps=steps)``).
        texture_lr / geom_lr: Adam learning rates of the logits / vertex offsets (DG: 0.2 / 1e-4).
        train_geo: also optimise per-vertex offsets (normals are then recomputed every step).
        ref_size: reference-view render and loss size (DG 256, CG 1024).
        views: stage 1's :class:`ViewSampler` (or its ``_target_`` config / kwargs); its ``batch_size`` and
            ``resolution`` give the novel views per step and their render size (DG 1 @ 512, CG 2 @ 1024).
        ref_weight / refine_weight: weights (numbers or schedules) of the two losses (DG: 1 and 1).
        strength: refine strength schedule (DG: ``0.8 + 0.15 r`` = ``LinearRamp(0.8, 0.95)``).
        refine_steps: DDIM steps of the prior's refine schedule (DG 50; the strength picks the start index).
        random_ssaa / ssaa_min / ssaa_max: random render scale ``clamp(2 U, min, max)``; off -> always 1.
        ssaa_per: ``render`` (DG: a new scale for the reference render and for each novel view) or ``step`` (one
            scale shared by all renders of a step).
        ssaa_resize: ``bilinear`` (DG) or ``antialiased``: how a render at another scale is resized back.
        texture_filter_space: ``logits`` (DG: mip-filter the logits, then the sigmoid) or ``albedo`` (filter
            ``sigmoid(logits)``).
        silhouette: ``binary`` (DG: antialiased colour, binary coverage alpha; the reference mask uses it) or
            ``antialiased`` (colour and coverage antialiased together, composited by the fractional alpha).
        ref_mask: ``render`` (DG: the reference loss where ``alpha > 0 & viewcos > viewcos_threshold``) or
            ``render_and_input`` (also only where the input's alpha > 0.5: a mesh larger than the object is not
            painted with the input's background).
        max_nonfinite_steps: consecutive steps with a NaN/inf loss or gradient tolerated (skipped) before
            :class:`NonFiniteError` stops the run.
        log_images_every_n_steps: image grids to loggers that have ``log_image`` (0 disables).
        seed: seeds the views and render scales as a function of ``(seed, step)`` (resume-exact).
    """

    def __init__(self, mesh: Mesh, reference: ReferenceImage, prior: Any, rasterizer: Any, *, steps: int = 50,
                 texture_lr: float = 0.2, geom_lr: float = 1e-4, train_geo: bool = False,
                 default_texture_size: int = 1024, ref_size: int = 256, views: Any = None,
                 fovy_deg: float = 49.1, radius: float = 2.0, ref_weight: float | Schedule = 1.0,
                 refine_weight: float | Schedule = 1.0, strength: float | Schedule | None = None,
                 refine_steps: int = 50, random_ssaa: bool = True, ssaa_min: float = 0.125, ssaa_max: float = 2.0,
                 ssaa_per: Literal["render", "step"] = "render",
                 ssaa_resize: Literal["bilinear", "antialiased"] = "bilinear",
                 texture_filter_space: Literal["logits", "albedo"] = "logits",
                 silhouette: Literal["binary", "antialiased"] = "binary", viewcos_threshold: float = 0.5,
                 ref_mask: Literal["render", "render_and_input"] = "render", max_nonfinite_steps: int = 5,
                 log_images_every_n_steps: int = 25,
                 seed: int = 0) -> None:
        super().__init__()
        self.automatic_optimization = False
        mesh, reference = _unwrap_structured(mesh), _unwrap_structured(reference)
        if steps < 1:
            raise ConfigError(f"stage2.steps must be >= 1, got {steps}")
        if texture_lr <= 0 or (train_geo and geom_lr <= 0):
            raise ConfigError(f"stage2 learning rates must be positive (texture_lr={texture_lr}, geom_lr={geom_lr})")
        if ref_size < 8:
            raise ConfigError(f"stage2.ref_size must be >= 8, got {ref_size}")
        if not 0 < ssaa_min <= ssaa_max:
            raise ConfigError(f"stage2 needs 0 < ssaa_min <= ssaa_max, got {ssaa_min}, {ssaa_max}")
        if ssaa_per not in SSAA_PER:
            raise ConfigError(f"stage2.ssaa_per={ssaa_per!r}; expected one of {SSAA_PER}")
        if texture_filter_space not in FILTER_SPACES:
            raise ConfigError(f"stage2.texture_filter_space={texture_filter_space!r}; expected one of {FILTER_SPACES}")
        from cg_lightning.render.mesh.render import check_render_options

        check_render_options("none", silhouette, ssaa_resize)
        if ref_mask not in REF_MASKS:
            raise ConfigError(f"stage2.ref_mask={ref_mask!r}; expected one of {REF_MASKS}")
        if max_nonfinite_steps < 1:
            raise ConfigError(f"stage2.max_nonfinite_steps must be >= 1, got {max_nonfinite_steps}")
        if mesh.vt is None:
            raise ConfigError("stage2 needs a UV-mapped mesh (Mesh.vt is None); unwrap it first (mesh/uv.py)")
        if mesh.num_faces == 0:
            raise ConfigError("stage2 got an empty mesh (no faces)")

        self.steps = int(steps)
        self.texture_lr, self.geom_lr, self.train_geo = float(texture_lr), float(geom_lr), bool(train_geo)
        self.ref_size = int(ref_size)
        self.fovy_deg, self.radius = float(fovy_deg), float(radius)
        self.refine_steps = int(refine_steps)
        self.random_ssaa, self.ssaa_min, self.ssaa_max = bool(random_ssaa), float(ssaa_min), float(ssaa_max)
        self.ssaa_per, self.ssaa_resize = str(ssaa_per), str(ssaa_resize)
        self.texture_filter_space, self.silhouette = str(texture_filter_space), str(silhouette)
        self.viewcos_threshold = float(viewcos_threshold)
        self.ref_mask = str(ref_mask)
        self.max_nonfinite_steps = int(max_nonfinite_steps)
        self.log_images_every_n_steps = int(log_images_every_n_steps)
        self.seed = int(seed)
        self.strength = as_schedule(_build(strength) if strength is not None else LinearRamp(0.8, 0.95))
        self.losses: dict[str, LossTerm] = {"ref": MaskedReferenceMSE(_build(ref_weight)),
                                            "refine": RefineMSE(_build(refine_weight))}
        refine_w = self.losses["refine"].weight
        if prior is None and any(float(refine_w(s, self.steps)) != 0.0 for s in range(self.steps)):
            raise ConfigError("stage2 has no prior but refine_weight is not 0; give a prior or set refine_weight: 0")
        self.views: ViewSampler = self._make_sampler(views)
        self.consecutive_nonfinite = 0
        self.skipped_steps = 0

        # Plain attributes (object.__setattr__ bypasses nn.Module registration): never in the checkpoint, never moved
        # by .to(); the prior handles its own device in setup().
        object.__setattr__(self, "prior", prior)
        object.__setattr__(self, "rasterizer", rasterizer)
        object.__setattr__(self, "reference", reference)

        # The mesh as buffers (checkpointed: a stage-2 checkpoint is a complete textured mesh).
        self.register_buffer("v", mesh.v.detach().float().clone())
        self.register_buffer("f", mesh.f.detach().long().clone())
        self.register_buffer("vt", mesh.vt.detach().float().clone())
        vn = mesh.vn if mesh.vn is not None else mesh.auto_normals().vn
        self.register_buffer("vn", vn.detach().float().clone(), persistent=False)
        albedo = mesh.albedo
        if albedo is None:
            n = int(default_texture_size)
            albedo = torch.full((n, n, 3), 0.5, dtype=torch.float32)
        self.raw_albedo = nn.Parameter(albedo_to_logits(albedo.detach().to(self.v.device)))
        self.v_offsets = nn.Parameter(torch.zeros_like(self.v)) if self.train_geo else None
        self._last_images: dict[str, Tensor] = {}

    # ------------------------------------------------------------------------------------------ construction
    def _make_sampler(self, views: Any) -> ViewSampler:
        if views is None:
            return ViewSampler(batch_size=1, resolution=512, invert_bg_prob=0.0, radius=self.radius, seed=self.seed)
        if isinstance(views, ViewSampler):
            if abs(views.radius - self.radius) > 1e-6:
                raise ConfigError(f"stage2: view sampler radius {views.radius} differs from stage2.radius {self.radius}")
            return views
        if isinstance(views, Mapping) or hasattr(views, "_get_node"):
            if "_target_" in views:
                sampler = _build(views, seed=self.seed, radius=self.radius)
            else:
                try:
                    sampler = ViewSampler(**{"seed": self.seed, "radius": self.radius, **dict(views)})
                except TypeError as exc:
                    raise ConfigError(f"stage2.views: {exc}") from exc
            if not isinstance(sampler, ViewSampler):
                raise ConfigError(f"stage2.views must build a ViewSampler, got {type(sampler).__name__}")
            return sampler
        raise ConfigError(f"stage2.views must be a ViewSampler or its config, got {type(views).__name__}")

    # ------------------------------------------------------------------------------------------ mesh access
    @property
    def albedo(self) -> Tensor:
        """Current texture (Ht,Wt,3) in (0,1) = sigmoid(logits), with grad."""
        return torch.sigmoid(self.raw_albedo)

    def current_mesh(self) -> Mesh:
        """The mesh as rendered now (offsets applied, normals recomputed when geometry trains), with grad."""
        if self.v_offsets is None:
            return Mesh(v=self.v, f=self.f, vn=self.vn, vt=self.vt)
        return Mesh(v=self.v + self.v_offsets, f=self.f, vt=self.vt).auto_normals()

    @torch.no_grad()
    def export_mesh(self) -> Mesh:
        """The refined textured mesh for export: albedo = sigmoid(logits), vertex offsets applied (CPU tensors)."""
        mesh = self.current_mesh()
        return Mesh(v=mesh.v.detach().cpu().clone(), f=mesh.f.cpu().clone(), vn=mesh.vn.detach().cpu().clone(),
                    vt=mesh.vt.cpu().clone(), albedo=self.albedo.detach().cpu().clone())

    @staticmethod
    def mesh_from_checkpoint(path: str | Path) -> Mesh:
        """The refined textured mesh stored in a stage-2 checkpoint (export-only mode, no prior needed)."""
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
        sd = ckpt.get("state_dict", ckpt)
        missing = [k for k in ("v", "f", "vt", "raw_albedo") if k not in sd]
        if missing:
            raise ConfigError(f"{path} is not a stage-2 checkpoint (missing {missing})")
        v = sd["v"] + sd["v_offsets"] if "v_offsets" in sd else sd["v"]
        return Mesh(v=v.float(), f=sd["f"].long(), vt=sd["vt"].float(),
                    albedo=torch.sigmoid(sd["raw_albedo"].float())).auto_normals()

    # ------------------------------------------------------------------------------------------ rendering
    def reference_camera(self, size: int | None = None) -> Camera:
        """The input view's camera: azimuth 0 at the input's elevation."""
        s = int(size or self.ref_size)
        return orbit(self.reference.elevation, 0.0, self.radius, fovy_deg=self.fovy_deg, width=s, height=s)

    def render(self, cameras: list[Camera], ssaa: float | Sequence[float] = 1.0, mesh: Mesh | None = None,
               raw_albedo: Tensor | None = None) -> RenderResult:
        """Render ``cameras`` on white with the mip-mapped texture ``raw_albedo`` (logits; default: the current
        parameter). ``ssaa``: one scale for all cameras or one per camera; each render rasterises at
        ``ceil8(size * ssaa)`` and is resized back (render_mesh does both)."""
        from cg_lightning.render.mesh import render_mesh

        mesh = mesh if mesh is not None else self.current_mesh()
        raw = raw_albedo if raw_albedo is not None else self.raw_albedo
        scales = [float(ssaa)] * len(cameras) if isinstance(ssaa, int | float) else [float(x) for x in ssaa]
        if len(scales) != len(cameras):
            raise ValueError(f"render: {len(scales)} render scales for {len(cameras)} cameras")
        if self.texture_filter_space == "logits":
            texture, activation = raw, "sigmoid"
        else:
            texture, activation = torch.sigmoid(raw), "none"
        white = torch.ones(3, device=self.v.device)
        outs = [render_mesh(mesh, cam.to(self.v.device), self.rasterizer, white, albedo=texture,
                            filter_mode="linear-mipmap-linear", ssaa=s, texture_activation=activation,
                            silhouette=self.silhouette, resize=self.ssaa_resize)
                for cam, s in zip(cameras, scales, strict=True)]
        return RenderResult(torch.stack([o.image for o in outs]), torch.stack([o.alpha for o in outs]),
                            torch.stack([o.viewcos for o in outs]))

    @torch.no_grad()
    def render_view(self, camera: Camera) -> Tensor:
        """(3,H,W) render of the current textured mesh at scale 1 (evaluation, turntables)."""
        return self.render([camera]).image[0]

    # ------------------------------------------------------------------------------------------ Lightning hooks
    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = [{"params": [self.raw_albedo], "lr": self.texture_lr, "name": "texture"}]
        if self.v_offsets is not None:
            groups.append({"params": [self.v_offsets], "lr": self.geom_lr, "name": "geometry"})
        return torch.optim.Adam(groups)

    def train_dataloader(self) -> DataLoader:
        return view_dataloader(self.views, self.steps, self.reference.elevation, lambda: self.global_step)

    def on_fit_start(self) -> None:
        check_max_steps(self.trainer, self.steps, "stage2")
        if self.prior is not None:
            self.prior.setup(self.device)
            # the input at the reference size, as DG conditions Zero123 (the prior resizes to its own resolution)
            self.prior.set_reference(self.reference.rgb_at(self.ref_size).to(self.device),
                                     float(self.reference.elevation))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["stage2"] = {"skipped_steps": self.skipped_steps, "consecutive_nonfinite": self.consecutive_nonfinite}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another mesh / texture size / train_geo setting with a readable message."""
        extra = checkpoint.get("stage2", {})
        self.skipped_steps = int(extra.get("skipped_steps", 0))
        self.consecutive_nonfinite = int(extra.get("consecutive_nonfinite", 0))
        sd = checkpoint.get("state_dict", {})
        own = self.state_dict()
        for key, value in own.items():
            if key not in sd:
                raise ConfigError(f"stage2 checkpoint has no '{key}' (was it written with train_geo="
                                  f"{not self.train_geo}?); delete the stage2 checkpoints or set resume=never")
            if tuple(sd[key].shape) != tuple(value.shape):
                raise ConfigError(f"stage2 checkpoint '{key}' has shape {tuple(sd[key].shape)} but this run has "
                                  f"{tuple(value.shape)}: it belongs to another mesh; set resume=never")
        extra = sorted(set(sd) - set(own))
        if extra:
            raise ConfigError(f"stage2 checkpoint has unexpected entries {extra}; set resume=never")

    # ------------------------------------------------------------------------------------------ the step
    def render_scales(self, step: int, count: int) -> list[float]:
        """The render scales of the ``count`` renders of ``step`` (reference first, then the novel views)."""
        if not self.random_ssaa:
            return [1.0] * count
        if self.ssaa_per == "step":
            return [sample_ssaa(self.seed, step, self.ssaa_min, self.ssaa_max)] * count
        return sample_ssaa_scales(self.seed, step, count, self.ssaa_min, self.ssaa_max)

    def compute_losses(self, batch: ViewBatch) -> tuple[Tensor, dict[str, float], dict[str, LossOutput]]:
        """Render, refine and evaluate every loss of one step; returns (total, scalar logs, per-term outputs)."""
        step = int(batch.step)
        cams = batch.cameras(self.fovy_deg)
        scales = self.render_scales(step, 1 + len(cams))
        mesh = self.current_mesh()
        ref = self.render([self.reference_camera()], scales[:1], mesh)
        ref_valid = (ref.alpha > 0) & (ref.viewcos > self.viewcos_threshold)
        if self.ref_mask == "render_and_input":  # not where the mesh shows but the input is background
            ref_valid = ref_valid & (self.reference.alpha_at(self.ref_size).to(self.device) > 0.5)
        ref_target = self.reference.rgb_at(self.ref_size).to(self.device)

        novel = self.render(cams, scales[1:], mesh)
        r = step_ratio(step, self.steps)
        strength = float(self.strength(step, self.steps))
        refined = None
        if self.prior is not None and float(self.losses["refine"].weight(step, self.steps)) != 0.0:
            with torch.no_grad():
                # a prior that refines on the current geometry (the oracle's aligned refine) gets the mesh too
                extra = {"geometry": Mesh(v=mesh.v.detach(), f=mesh.f, vn=mesh.vn.detach(), vt=mesh.vt)} \
                    if getattr(self.prior, "accepts_geometry", False) else {}
                out = self.prior.refine(novel.image.detach(), batch.d_elev, batch.d_azim, batch.d_radius,
                                        strength=strength, steps=self.refine_steps, **extra)
                refined = F.interpolate(out.float().to(self.device), size=novel.image.shape[-2:], mode="bilinear",
                                        align_corners=False)
        ctx = TextureLossContext(step=step, total_steps=self.steps, ref_render=ref.image, ref_target=ref_target,
                                 ref_valid=ref_valid.detach(), novel_images=novel.image, refined=refined)
        outputs = {name: term(ctx) for name, term in self.losses.items()}
        weighted = [o.weighted for o in outputs.values() if o.weighted is not None]
        total = torch.stack(weighted).sum() if weighted else self.raw_albedo.sum() * 0.0
        logs: dict[str, float] = {"ssaa": float(np.mean(scales)), "strength": strength, "ratio": r,
                                  "render_resolution": float(batch.resolution)}
        for name, o in outputs.items():
            logs[f"weight/{name}"] = o.weight
            if o.raw is not None:
                logs[f"loss/{name}"] = float(o.raw.detach())
                logs[f"loss/{name}_w"] = float(o.weighted.detach())
            for k, v in o.logs.items():
                logs[f"{name}/{k}"] = v
        logs["loss/total"] = float(total.detach())
        self._last_images = {"ref_render": ref.image.detach(), "ref_target": ref_target.detach(),
                             "novel": novel.image.detach()}
        if refined is not None:
            self._last_images["refined"] = refined.detach()
        return total, logs, outputs

    def training_step(self, batch: ViewBatch, batch_idx: int) -> None:
        step = int(self.global_step)
        if int(batch.step) != step:
            raise RuntimeError(f"stage2 camera stream is out of sync: batch for step {batch.step} at step {step}")
        opt = self.optimizers()
        total, logs, _ = self.compute_losses(batch)
        opt.zero_grad(set_to_none=True)
        finite = bool(torch.isfinite(total))
        if finite:
            self.manual_backward(total)
            finite = all(bool(torch.isfinite(p.grad).all()) for p in self.parameters() if p.grad is not None)
        if finite:
            self.consecutive_nonfinite = 0
        else:
            # Drop the gradients; the gradient-free Adam step changes nothing but still advances global_step,
            # so the step count, the camera stream and the schedules stay aligned.
            opt.zero_grad(set_to_none=True)
            self._on_nonfinite(step, logs)
        opt.step()
        opt.zero_grad(set_to_none=True)
        for group in opt.param_groups:
            logs[f"lr/{group.get('name', 'group')}"] = float(group["lr"])
        logs["step"] = float(step)
        logs["skipped_steps"] = float(self.skipped_steps)
        self.log_dict({f"{LOG_PREFIX}/{k}": v for k, v in logs.items()}, on_step=True, on_epoch=False,
                      batch_size=batch.size)
        self.log(f"{LOG_PREFIX}/loss", logs["loss/total"], prog_bar=True, on_step=True, on_epoch=False,
                 batch_size=batch.size, logger=False)
        self._maybe_log_images(step)

    def _on_nonfinite(self, step: int, logs: dict[str, float]) -> None:
        self.consecutive_nonfinite += 1
        self.skipped_steps += 1
        log.warning("stage2: non-finite loss or gradient at step %d (%d in a row), update skipped; losses %s",
                    step, self.consecutive_nonfinite, {k: v for k, v in logs.items() if k.startswith("loss/")})
        if self.consecutive_nonfinite >= self.max_nonfinite_steps:
            raise NonFiniteError(f"stage2: {self.consecutive_nonfinite} consecutive steps with a NaN/inf loss or "
                                 f"gradient (last at step {step}). Check the prior's outputs and the input mesh, or "
                                 f"raise stage2.max_nonfinite_steps.")

    # ------------------------------------------------------------------------------------------ media
    def image_grid(self, size: int = 256) -> np.ndarray | None:
        """Last step's [ref render | input | novel renders | refined] as one uint8 (H,W,3) grid, or None."""
        imgs = self._last_images
        if not imgs:
            return None
        tiles = [imgs["ref_render"], imgs["ref_target"], imgs["novel"]]
        if "refined" in imgs:
            tiles.append(imgs["refined"])
        row = torch.cat([F.interpolate(t.float().cpu(), size=(size, size), mode="bilinear", align_corners=False)
                         for t in tiles], dim=0)
        grid = torch.cat(list(row.clamp(0, 1)), dim=-1)  # (3, size, n*size)
        return (grid.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)

    def _maybe_log_images(self, step: int) -> None:
        every = self.log_images_every_n_steps
        if every <= 0 or ((step + 1) % every != 0 and step + 1 != self.steps):
            return
        targets = [lg for lg in self.loggers if hasattr(lg, "log_image")]
        if not targets:
            return
        grid = self.image_grid()
        if grid is None:
            return
        caption = f"step {step}: reference-view render | input | novel render(s) | refined target(s)"
        for lg in targets:  # at the step whose renders these are (the step of that step's scalars)
            lg.log_image(key=f"{LOG_PREFIX}/views", images=[grid], caption=[caption], step=step)
