"""Stage 1 as a LightningModule: fit 3D Gaussians to one image under a diffusion prior (DreamGaussian loop).

Per step (reference §2.7, §1.4): set the xyz learning rate, render the reference view (white background, reference
size) and the step's novel views, evaluate the configured loss terms, back-propagate, take one Adam step and let
the density controller clone/split/prune from the statistics of the last novel-view render.

Design points (why):
* Manual optimisation with ONE Adam (one named group per Gaussian property): densification edits the optimiser
  state, and several optimisers would advance ``global_step`` more than once per step (Lightning #17958).
* The prior, the rasterizer and the loss terms are kept out of ``nn.Module`` registration (plain attributes set
  through ``object.__setattr__``), so their frozen weights never land in a checkpoint.
* Everything random in a step is derived from ``(seed, step)``: the cameras (``ViewSampler``) and, when
  ``reseed_each_step``, torch's global RNG (SDS noise, split positions). A run resumed from ``last.ckpt`` therefore
  continues exactly like the uninterrupted run, Gaussian count included.
* A non-finite loss or gradient skips the update (the optimiser still "steps" with no gradients so that
  ``global_step`` keeps counting iterations); ``max_consecutive_bad_steps`` in a row raise :class:`NonFiniteError`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from cg_lightning.data.reference import ReferenceImage
from cg_lightning.data.views import ViewBatch, ViewSampler, check_max_steps, view_dataloader
from cg_lightning.errors import CGError, ConfigError, NonFiniteError
from cg_lightning.gaussians.model import GaussianModel
from cg_lightning.gaussians.optim import LogLinearSchedule, build_optimizer, get_group, set_lr
from cg_lightning.losses.base import LossContext, LossOutput, LossTerm, as_loss_terms

log = logging.getLogger(__name__)

DEFAULT_LRS = {"xyz": 0.01, "features_dc": 0.01, "features_rest": 0.0005, "opacity": 0.05, "scaling": 0.005,
               "rotation": 0.005}


def _instantiate(obj: Any) -> Any:
    """Instantiate a ``_target_`` config (the pipeline calls us with ``_recursive_=False``); objects pass through."""
    if obj is not None and hasattr(obj, "keys") and "_target_" in obj:
        from hydra.utils import instantiate

        return instantiate(obj)
    return obj


def step_seed(seed: int, step: int) -> int:
    """A well-mixed 63-bit seed for ``(seed, step)`` (both non-negative)."""
    state = np.random.SeedSequence([int(seed) % (1 << 64), int(step) % (1 << 64)]).generate_state(1, dtype=np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


class GaussianStage(L.LightningModule):
    """Stage-1 LightningModule; build with ``instantiate(cfg.stage1, reference=..., prior=..., rasterizer=...,
    losses=...)`` and run with ``trainer.fit(stage, ckpt_path=...)`` (``trainer.max_steps == stage.steps``)."""

    def __init__(self, reference: ReferenceImage, prior: Any, rasterizer: Any, losses: Mapping[str, LossTerm],
                 views: ViewSampler | Mapping | None = None, density: Any = None, steps: int = 500,
                 ref_size: int = 256, num_points: int = 5000, init_radius: float = 0.5, sh_degree: int = 0,
                 lrs: Mapping[str, float] | None = None, xyz_lr_final: float = 2e-4, xyz_lr_steps: int | None = None,
                 adam_eps: float = 1e-15, fovy: float = 49.1, final_prune_min_opacity: float = 0.01,
                 final_prune_max_scale: float = 0.1, max_consecutive_bad_steps: int = 10, seed: int = 0,
                 reseed_each_step: bool = True, image_log_every_n_steps: int = 100,
                 log_guidance_eval: bool = True, guidance_eval_strength: float = 0.8,
                 point_cloud_max_points: int = 20_000) -> None:
        super().__init__()
        self.automatic_optimization = False
        if not isinstance(reference, ReferenceImage):
            raise ConfigError(f"reference must be a ReferenceImage, got {type(reference).__name__}")
        if steps < 1 or ref_size < 8 or num_points < 1:
            raise ConfigError(f"stage1 needs steps >= 1, ref_size >= 8, num_points >= 1 "
                              f"(got {steps}, {ref_size}, {num_points})")
        terms = as_loss_terms(_instantiate(losses) if not hasattr(losses, "items") else losses)
        if not terms:
            raise ConfigError("stage1 has no loss terms; check the `loss` config")
        views = _instantiate(views) if views is not None else ViewSampler()
        if not isinstance(views, ViewSampler):
            raise ConfigError(f"stage1.views must be a ViewSampler config, got {type(views).__name__}")
        views.seed = int(seed)  # one seed per run: cameras, initialisation and per-step RNG all derive from it
        # frozen helpers stay plain attributes: never registered as submodules, never in the state_dict
        object.__setattr__(self, "prior", prior)
        object.__setattr__(self, "rasterizer", rasterizer)
        object.__setattr__(self, "losses", terms)
        object.__setattr__(self, "reference", reference)
        self.views = views
        self.steps, self.ref_size, self.fovy = int(steps), int(ref_size), float(fovy)
        self.seed, self.reseed_each_step = int(seed), bool(reseed_each_step)
        self.lrs = dict(DEFAULT_LRS if lrs is None else lrs)
        self.adam_eps = float(adam_eps)
        self.xyz_schedule = LogLinearSchedule(self.lrs["xyz"], xyz_lr_final, int(xyz_lr_steps or steps))
        self.final_prune_min_opacity, self.final_prune_max_scale = float(final_prune_min_opacity), float(
            final_prune_max_scale)
        self.max_consecutive_bad_steps = int(max_consecutive_bad_steps)
        self.image_log_every_n_steps = int(image_log_every_n_steps)
        self.log_guidance_eval, self.guidance_eval_strength = bool(log_guidance_eval), float(guidance_eval_strength)
        self.point_cloud_max_points = int(point_cloud_max_points)

        generator = torch.Generator().manual_seed(self.seed)
        self.gaussians = GaussianModel.random_ball(int(num_points), float(init_radius), int(sh_degree),
                                                   generator=generator)
        self.density = _instantiate(density) if density is not None else self._default_density()
        self.register_buffer("ref_rgb", reference.rgb_at(self.ref_size).clone(), persistent=False)
        self.register_buffer("ref_alpha", reference.alpha_at(self.ref_size).clone(), persistent=False)
        self.skipped_steps = 0
        self.consecutive_bad_steps = 0
        self.finalized = False

    @staticmethod
    def _default_density() -> Any:
        from cg_lightning.gaussians.density import DensityController

        return DensityController()

    # ------------------------------------------------------------------------------------------ Lightning plumbing
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return build_optimizer(self.gaussians, self.lrs, eps=self.adam_eps)

    def train_dataloader(self) -> DataLoader:
        # our checkpoints are meant to hold the state after the step (global_step counts completed steps)
        warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
        return view_dataloader(self.views, self.steps, self.reference.elevation, lambda: self.global_step)

    def on_fit_start(self) -> None:
        check_max_steps(self.trainer, self.steps, "stage1")
        if self.prior is not None:
            self.prior.setup(self.device)
            if self.reseed_each_step:  # the conditioning may sample (VAE posterior): same on every (re)start
                torch.manual_seed(step_seed(self.seed, 1 << 40))
            self.prior.set_reference(self.ref_rgb, float(self.reference.elevation))
        for term in self.losses.values():
            term.setup(self.device)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["stage1"] = {"skipped_steps": self.skipped_steps, "consecutive_bad_steps": self.consecutive_bad_steps,
                                "finalized": self.finalized, "num_points": self.gaussians.num_points}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resize the Gaussians and the density statistics to the saved count before the state dict is copied."""
        n = int(checkpoint["state_dict"]["gaussians.xyz"].shape[0])
        self.gaussians.resize_(n)
        self.density.resize_(n)
        extra = checkpoint.get("stage1", {})
        self.skipped_steps = int(extra.get("skipped_steps", 0))
        self.consecutive_bad_steps = int(extra.get("consecutive_bad_steps", 0))
        self.finalized = bool(extra.get("finalized", False))

    # ------------------------------------------------------------------------------------------------ one step
    def reference_camera(self):
        """The input view's camera (elevation of the input, azimuth 0) at the reference size, on this device."""
        cached = self.__dict__.get("_ref_camera")
        if cached is None or cached.c2w.device != self.device:
            from cg_lightning.cameras import orbit

            cached = orbit(float(self.reference.elevation), 0.0, self.views.radius, fovy_deg=self.fovy,
                           width=self.ref_size, height=self.ref_size).to(self.device)
            self.__dict__["_ref_camera"] = cached
        return cached

    def render_views(self, batch: ViewBatch) -> list:
        bg = batch.bg.to(self.device, torch.float32)
        return [self.rasterizer.render(self.gaussians, cam.to(self.device), bg[k])
                for k, cam in enumerate(batch.cameras(self.fovy))]

    def training_step(self, batch: ViewBatch, batch_idx: int) -> Tensor:
        step = int(self.global_step)
        if batch.step != step:
            raise RuntimeError(f"stage1 camera stream is out of sync: batch for step {batch.step} at step {step}")
        if self.reseed_each_step:
            torch.manual_seed(step_seed(self.seed, step))
        opt = self.optimizers()
        raw_opt = opt.optimizer
        set_lr(raw_opt, "xyz", self.xyz_schedule(step + 1))  # DG counts steps from 1

        white = torch.ones(3, device=self.device)
        ref_out = self.rasterizer.render(self.gaussians, self.reference_camera(), white)
        novel_outs = self.render_views(batch)
        ctx = LossContext(step=step, total_steps=self.steps, ref_rgb=self.ref_rgb, ref_alpha=self.ref_alpha,
                          ref_render=ref_out.image[None], ref_alpha_render=ref_out.alpha[None],
                          novel_images=torch.stack([o.image for o in novel_outs]), views=batch, prior=self.prior)
        outputs = {name: term(ctx) for name, term in self.losses.items()}
        weighted = [o.weighted for o in outputs.values() if o.weighted is not None]
        total = torch.stack(weighted).sum() if weighted else ctx.novel_images.sum() * 0.0

        last = novel_outs[-1]
        self.density.before_backward(last)
        ok = bool(torch.isfinite(total))
        if ok:
            self.manual_backward(total)
            flags = [torch.isfinite(p.grad).all() for p in self.gaussians.parameters() if p.grad is not None]
            ok = bool(torch.stack(flags).all()) if flags else True  # one device sync, not one per parameter
        density_stats: dict[str, float] = {}
        if ok:
            opt.step()
            density_stats = dict(self.density.after_backward(step + 1, self.gaussians, raw_opt, last) or {})
            self.consecutive_bad_steps = 0
        else:
            self._skip_step(opt, step, outputs, total)
        opt.zero_grad(set_to_none=True)

        self._log_step(step, total, outputs, density_stats, batch, raw_opt)
        if self.image_log_every_n_steps > 0 and (step + 1) % self.image_log_every_n_steps == 0:
            self._log_images(step, ref_out.image.detach(), ctx.novel_images.detach(), batch)
        return total.detach()

    def _skip_step(self, opt, step: int, outputs: Mapping[str, LossOutput], total: Tensor) -> None:
        """Drop this step's gradients; the no-gradient optimizer step only advances Lightning's step counter."""
        self.skipped_steps += 1
        self.consecutive_bad_steps += 1
        opt.zero_grad(set_to_none=True)
        opt.step()
        values = {k: (None if o.raw is None else float(o.raw.detach())) for k, o in outputs.items()}
        log.warning("stage1: non-finite loss/gradient at step %d (total=%s, terms=%s); update skipped",
                    step, float(total.detach()), values)
        if self.consecutive_bad_steps >= self.max_consecutive_bad_steps:
            raise NonFiniteError(
                f"stage 1: the loss or its gradients were NaN/inf for {self.consecutive_bad_steps} consecutive steps "
                f"(last at step {step}, terms {values}). Lower the learning rates or loss weights, check the input "
                f"image and the prior weights, or raise stage1.max_consecutive_bad_steps.")

    # ------------------------------------------------------------------------------------------------ logging
    def _logger_writes_this_step(self, step: int) -> bool:
        """Lightning only hands metrics to the loggers every ``log_every_n_steps``; building the full metrics dict
        on other steps costs tens of ms per step (its collection handling), so do it only when it is written."""
        every = max(1, int(getattr(self.trainer, "log_every_n_steps", 1) or 1))
        return (step + 1) % every == 0 or step + 1 >= int(self.trainer.max_steps)

    def _log_step(self, step: int, total: Tensor, outputs: Mapping[str, LossOutput],
                  density_stats: Mapping[str, Any], batch: ViewBatch, optimizer: torch.optim.Optimizer) -> None:
        n = batch.size
        self.log("stage1/loss", total.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=n)
        self.log("stage1/N", float(self.gaussians.num_points), prog_bar=True, logger=False, on_step=True,
                 on_epoch=False, batch_size=n)
        if not self._logger_writes_this_step(step):
            return
        metrics: dict[str, float | Tensor] = {
            "stage1/num_gaussians": float(self.gaussians.num_points),
            "stage1/skipped_steps": float(self.skipped_steps),
            "stage1/render_resolution": float(batch.resolution),
        }
        for name, out in outputs.items():
            metrics[f"stage1/weight/{name}"] = out.weight
            if out.raw is not None:
                metrics[f"stage1/loss/{name}"] = out.raw.detach().float()
                metrics[f"stage1/loss/{name}_w"] = out.weighted.detach().float()
            for key, value in out.logs.items():
                metrics[f"stage1/{name}/{key}"] = float(value)
        for group in optimizer.param_groups:
            metrics[f"stage1/lr/{group['name']}"] = float(group["lr"])
        for key, value in density_stats.items():
            metrics[f"stage1/density/{key}"] = float(value)
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=n)

    def _image_loggers(self) -> list:
        return [lg for lg in (self.loggers or []) if callable(getattr(lg, "log_image", None))]

    @staticmethod
    def _to_uint8(images: Tensor, nrow: int) -> np.ndarray:
        from torchvision.utils import make_grid

        grid = make_grid(images.detach().float().clamp(0, 1), nrow=nrow, padding=2, pad_value=0.5)
        return (grid.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)

    def _log_images(self, step: int, ref_render: Tensor, novel: Tensor, batch: ViewBatch) -> None:
        """Grid ``reference | reference-view render | novel views``; with ``log_guidance_eval`` also the prior's
        ``refine`` of the novel views (what the guidance pulls them towards). Only for loggers with ``log_image``.

        Logged at ``step`` (the 0-based step whose renders they are, i.e. after ``step`` updates), the step of that
        step's scalars."""
        loggers = self._image_loggers()
        if not loggers:
            return
        import torch.nn.functional as F

        def fit(x: Tensor) -> Tensor:
            if tuple(x.shape[-2:]) == (self.ref_size, self.ref_size):
                return x
            return F.interpolate(x, size=(self.ref_size, self.ref_size), mode="bilinear", align_corners=False)

        n = novel.shape[0]
        keys, images, captions = ["stage1/views"], [self._to_uint8(torch.cat([self.ref_rgb, ref_render[None],
                                                                              fit(novel)]), 2 + n)], [
            f"step {step}: reference | reference-view render | {n} novel view(s)"]
        if self.log_guidance_eval and self.prior is not None and hasattr(self.prior, "refine"):
            with torch.no_grad():
                refined = self.prior.refine(novel, batch.d_elev, batch.d_azim, batch.d_radius,
                                            strength=self.guidance_eval_strength)
            keys.append("stage1/guidance")
            images.append(self._to_uint8(torch.cat([fit(novel), fit(refined.to(novel))]), n))
            captions.append(f"step {step}: novel views (top) | prior.refine, strength "
                            f"{self.guidance_eval_strength} (bottom)")
        for lg in loggers:
            for key, image, caption in zip(keys, images, captions, strict=True):
                lg.log_image(key=key, images=[image], caption=[caption], step=step)

    def _log_point_cloud(self) -> None:
        try:
            from lightning.pytorch.loggers import WandbLogger
        except ImportError:  # pragma: no cover - lightning always ships it
            return
        wandb_loggers = [lg for lg in (self.loggers or []) if isinstance(lg, WandbLogger)]
        if not wandb_loggers:
            return
        import wandb

        with torch.no_grad():
            xyz = self.gaussians.means.detach().float().cpu()
            rgb = (self.gaussians.colors.detach().float().cpu().clamp(0, 1) * 255)
        if xyz.shape[0] > self.point_cloud_max_points:
            keep = torch.randperm(xyz.shape[0], generator=torch.Generator().manual_seed(0))[: self.point_cloud_max_points]
            xyz, rgb = xyz[keep], rgb[keep]
        cloud = wandb.Object3D(torch.cat([xyz, rgb], dim=1).numpy())
        for lg in wandb_loggers:
            lg.log_metrics({"stage1/gaussians": cloud}, step=self.global_step)  # after the last update

    # ------------------------------------------------------------------------------------------------ the end
    def on_train_end(self) -> None:
        self.finalize()
        self._log_point_cloud()

    def _optimizer_or_none(self) -> torch.optim.Optimizer | None:
        trainer = self._trainer
        if trainer is None or not trainer.optimizers:
            return None
        opt = trainer.optimizers[0]
        try:
            get_group(opt, "xyz")
        except KeyError:
            return None
        return opt

    def finalize(self) -> None:
        """DreamGaussian's final prune (opacity < 0.01 or max scale > 0.1); idempotent."""
        if self.finalized:
            return
        with torch.no_grad():
            self.density.final_prune(self.gaussians, self._optimizer_or_none(),
                                     min_opacity=self.final_prune_min_opacity, max_scale=self.final_prune_max_scale)
        self.finalized = True
        log.info("stage1: %d Gaussians after the final prune", self.gaussians.num_points)

    def export_ply(self, path: str | Path) -> Path:
        """Final prune (if not yet done) and write the Gaussians as a standard 3DGS ``.ply`` (atomically)."""
        from cg_lightning.gaussians.ply import save_ply

        self.finalize()
        if self.gaussians.num_points == 0:
            raise CGError("stage1: no Gaussian is left after the final prune (every opacity < "
                          f"{self.final_prune_min_opacity} or scale > {self.final_prune_max_scale}): nothing to export; "
                          "train longer, or check the input's alpha and the density settings (stage1.density.*)")
        save_ply(path, self.gaussians)
        return Path(path)
