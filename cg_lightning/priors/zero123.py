"""Zero123 (zero123-xl / stable-zero123) as a novel-view prior: SDS guidance, DDIM refinement, sampling.

Built from the diffusers components of the public diffusers ports (``ashawkey/zero123-xl-diffusers``,
``ashawkey/stable-zero123-diffusers``) without their custom pipeline code: diffusers has no Zero123 pipeline and
``custom_pipeline=`` would fetch code at run time. The math follows DreamGaussian's guidance exactly (see
``shared/docs/reference-dreamgaussian.md`` §2.8):

* conditioning: the reference image, bilinearly resized to 256², gives a CLIP image embedding (through the repo's
  ``CLIPImageProcessor``) and an *unscaled* VAE posterior sample; the camera projection (``Linear(D+4 -> D)``)
  maps ``[clip ; pose]`` to one cross-attention token; the UNet sees ``[noisy latent ; image latent]`` (8 channels).
* classifier-free guidance with scale 5, the unconditional branch being all zeros (token and image latent).
* SDS: latents = VAE posterior sample x scaling_factor *with* grad; t annealed ``clip(round((1-r)T), 20, 980)``;
  w(t) = 1 - alpha_bar_t; grad = w (eps_hat - eps), NaN -> 0; loss = 0.5 * sum((z - sg(z - grad))^2).
* refine: DDIM with a 50-step schedule, start index ``int(steps * strength)``, eta 0, CFG 5, decode.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cg_lightning.errors import ConfigError, MissingWeightsError, WrongWeightsError
from cg_lightning.priors.base import DEFAULT_T_RANGE, SDSOutput, check_relative_views, sds_timestep

log = logging.getLogger(__name__)

ZERO123_XL = "ashawkey/zero123-xl-diffusers"
STABLE_ZERO123 = "ashawkey/stable-zero123-diffusers"
# The sub-folders of a Zero123 diffusers repo that we load (model_index.json names the same components).
COMPONENTS = ("unet", "vae", "image_encoder", "feature_extractor", "scheduler", "clip_camera_projection")
PoseEncoding = Literal["auto", "xl", "stable"]


def _camera_projection_class() -> type:
    """The camera projection as a diffusers model, so ``save_pretrained``/``from_pretrained`` use the repo layout.

    Built lazily (diffusers is a slow import). The class name matches the ``_class_name`` stored in the public
    repos' ``clip_camera_projection/config.json``; the weights are ``proj.weight`` (D, D+4) and ``proj.bias`` (D,).
    """
    global _CAMERA_PROJECTION
    if _CAMERA_PROJECTION is None:
        from diffusers.configuration_utils import ConfigMixin, register_to_config
        from diffusers.models.modeling_utils import ModelMixin

        class CLIPCameraProjection(ModelMixin, ConfigMixin):
            """Linear map of ``[CLIP image embedding ; 4-d relative pose]`` to one cross-attention token."""

            @register_to_config
            def __init__(self, embedding_dim: int = 768, additional_embeddings: int = 4) -> None:
                super().__init__()
                self.proj = nn.Linear(embedding_dim + additional_embeddings, embedding_dim)

            def forward(self, x: Tensor) -> Tensor:
                return self.proj(x)

        _CAMERA_PROJECTION = CLIPCameraProjection
    return _CAMERA_PROJECTION


_CAMERA_PROJECTION: type | None = None


@dataclass
class Zero123Components:
    """The loaded networks; kept together so loading and validation are one step."""

    unet: Any
    vae: Any
    image_encoder: Any
    feature_extractor: Any
    scheduler: Any
    camera_projection: Any


def is_hf_repo_id(name: str) -> bool:
    """``owner/name`` with no path-like prefix (a local folder of that name wins when it exists)."""
    return (name.count("/") == 1 and not name.startswith((".", "/", "~")) and "\\" not in name
            and all(part for part in name.split("/")))


def resolve_zero123_dir(model: str, allow_download: bool = True, revision: str | None = None) -> Path:
    """Local folder for ``model`` (a folder path or a HF id); MissingWeightsError when it cannot be had."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise WrongWeightsError(f"Zero123 model {model!r} is a file; expected a folder with sub-folders "
                                f"{', '.join(COMPONENTS)} (the layout of {ZERO123_XL}).")
    if not is_hf_repo_id(model):
        raise MissingWeightsError(
            f"Zero123 model folder {model}", [str(path.resolve())],
            f"point prior.model to a folder with {'/, '.join(COMPONENTS)}/ sub-folders, or use a Hugging Face id "
            f"such as {ZERO123_XL} after fetching it with `make weights`.")
    from cg_lightning.weights import ZERO123_PATTERNS, fetch_hint_for, resolve_hf_snapshot

    return resolve_hf_snapshot(model, ZERO123_PATTERNS, what=f"Zero123 diffusers model '{model}'",
                               required=COMPONENTS, allow_download=allow_download, revision=revision,
                               fetch_hint=fetch_hint_for(model))


def load_zero123_components(folder: Path, dtype: torch.dtype) -> Zero123Components:
    """Load every component from a Zero123 diffusers folder and check they fit together."""
    missing = [c for c in COMPONENTS if not (folder / c).is_dir()]
    if missing:
        raise WrongWeightsError(f"{folder} is not a Zero123 diffusers folder: missing sub-folder(s) "
                                f"{', '.join(missing)} (expected {', '.join(COMPONENTS)}).")
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype)
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(folder / "image_encoder", dtype=dtype)
        feature_extractor = CLIPImageProcessor.from_pretrained(folder / "feature_extractor")
        scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
        projection = _camera_projection_class().from_pretrained(folder, subfolder="clip_camera_projection",
                                                                  torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise WrongWeightsError(f"Could not load the Zero123 components from {folder}: {exc}") from exc

    embed_dim = image_encoder.config.projection_dim
    problems = []
    if unet.config.in_channels != 8:
        problems.append(f"unet in_channels is {unet.config.in_channels}, Zero123 needs 8 (noisy + image latent)")
    if unet.config.cross_attention_dim != embed_dim:
        problems.append(f"unet cross_attention_dim {unet.config.cross_attention_dim} != CLIP projection_dim "
                        f"{embed_dim}")
    if projection.proj.in_features != embed_dim + 4 or projection.proj.out_features != embed_dim:
        problems.append(f"camera projection is {projection.proj.in_features}->{projection.proj.out_features}, "
                        f"expected {embed_dim + 4}->{embed_dim}")
    if scheduler.config.prediction_type != "epsilon":
        problems.append(f"scheduler prediction_type is {scheduler.config.prediction_type!r}, expected 'epsilon'")
    if problems:
        raise WrongWeightsError(f"{folder} does not hold a consistent Zero123 model: " + "; ".join(problems))
    for module in (unet, vae, image_encoder, projection):
        module.eval().requires_grad_(False)
    return Zero123Components(unet, vae, image_encoder, feature_extractor, scheduler, projection)


class Zero123Prior:
    """Zero123 guidance implementing :class:`cg_lightning.priors.base.Prior`.

    Args:
        model: HF id (default zero123-xl) or a local folder in the same layout.
        pose_encoding: ``xl`` -> [rad(d_elev), sin(d_azim), cos(d_azim), d_radius] (zero123 / zero123-xl);
            ``stable`` -> [rad(d_elev), sin, cos, rad(90 + reference elevation)] (stable-zero123);
            ``auto`` -> ``stable`` when the model name contains "stable", like DreamGaussian.
        guidance_scale: classifier-free guidance scale (5 in the reference).
        t_range: SDS timestep range as fractions of the training timesteps.
        anneal_timestep: annealed t from ``step_ratio`` (reference default); False draws t uniformly.
        dtype: ``auto`` (fp16 on CUDA, fp32 elsewhere), ``fp16`` or ``fp32``.
        seed: if set, a private generator makes noise and timesteps reproducible regardless of global RNG use.
        allow_download: fetch from the Hub when not cached (ignored when ``HF_HUB_OFFLINE=1``).
    """

    resolution: int = 256

    def __init__(self, model: str = ZERO123_XL, pose_encoding: PoseEncoding = "auto", guidance_scale: float = 5.0,
                 t_range: tuple[float, float] | list[float] = DEFAULT_T_RANGE, anneal_timestep: bool = True,
                 dtype: str = "auto", seed: int | None = None, allow_download: bool = True,
                 revision: str | None = None) -> None:
        if pose_encoding not in ("auto", "xl", "stable"):
            raise ConfigError(f"prior.pose_encoding must be auto|xl|stable, got {pose_encoding!r}")
        if dtype not in ("auto", "fp16", "fp32"):
            raise ConfigError(f"prior.dtype must be auto|fp16|fp32, got {dtype!r}")
        lo, hi = (float(v) for v in t_range)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ConfigError(f"prior.t_range must satisfy 0 <= lo <= hi <= 1, got {list(t_range)}")
        self.model = str(model)
        self.pose_encoding: PoseEncoding = pose_encoding
        self.guidance_scale = float(guidance_scale)
        self.t_range = (lo, hi)
        self.anneal_timestep = bool(anneal_timestep)
        self.dtype_name = dtype
        self.seed = seed
        self.allow_download = allow_download
        self.revision = revision
        self.device: torch.device | None = None
        self.dtype: torch.dtype = torch.float32
        self.c: Zero123Components | None = None
        self._noise_gen: torch.Generator | None = None
        self._t_gen: torch.Generator | None = None
        self._ref_token: Tensor | None = None      # (1,1,D) CLIP image embedding
        self._ref_latent: Tensor | None = None     # (1,4,32,32) unscaled VAE posterior sample
        self._ref_elevation: float = 0.0

    # ------------------------------------------------------------------ setup
    def _model_folder(self) -> Path:
        return resolve_zero123_dir(self.model, self.allow_download, self.revision)

    @property
    def stable(self) -> bool:
        if self.pose_encoding == "auto":
            return "stable" in self.model.lower()
        return self.pose_encoding == "stable"

    def setup(self, device: torch.device | str) -> None:
        device = torch.device(device)
        if self.c is not None and self.device == device:
            return
        dtype = {"fp16": torch.float16, "fp32": torch.float32}.get(self.dtype_name)
        if dtype is None:
            dtype = torch.float16 if device.type == "cuda" else torch.float32
        if self.c is None:
            self.c = load_zero123_components(self._model_folder(), dtype)
            log.info("Zero123 loaded from %s (%s, %s)", self.model, device, dtype)
        for module in (self.c.unet, self.c.vae, self.c.image_encoder, self.c.camera_projection):
            module.to(device)
            if module.dtype != dtype:      # only cast when needed (diffusers warns about every .to(dtype))
                module.to(dtype)
        if self._ref_token is not None:
            self._ref_token = self._ref_token.to(device, dtype)
            self._ref_latent = self._ref_latent.to(device, dtype)
        self.device, self.dtype = device, dtype
        self._alphas_cumprod = self.c.scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
        if self.seed is not None:
            self._noise_gen = torch.Generator(device=device).manual_seed(int(self.seed))
            self._t_gen = torch.Generator().manual_seed(int(self.seed) + 1)

    def _components(self) -> Zero123Components:
        if self.c is None:
            raise RuntimeError("Zero123Prior.setup(device) must be called before use")
        return self.c

    @property
    def num_train_timesteps(self) -> int:
        return int(self._components().scheduler.config.num_train_timesteps)

    # ------------------------------------------------------------------ helpers
    def _randn(self, shape: tuple[int, ...]) -> Tensor:
        return torch.randn(shape, generator=self._noise_gen, device=self.device, dtype=self.dtype)

    def _to_256(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B,3,H,W), got {tuple(images.shape)}")
        images = images.to(self.device)
        if images.shape[-2:] != (self.resolution, self.resolution):
            images = F.interpolate(images, (self.resolution, self.resolution), mode="bilinear", align_corners=False)
        return images

    def _encode(self, images_256: Tensor) -> Tensor:
        """VAE posterior *sample* (not the mode, as the reference) x scaling_factor; differentiable."""
        vae = self._components().vae
        posterior = vae.encode(images_256.to(self.dtype) * 2.0 - 1.0).latent_dist
        return posterior.sample(generator=self._noise_gen) * vae.config.scaling_factor

    def _decode(self, latents: Tensor) -> Tensor:
        vae = self._components().vae
        images = vae.decode(latents / vae.config.scaling_factor).sample
        return (images.float() * 0.5 + 0.5).clamp(0.0, 1.0)

    def camera_embedding(self, d_elev: Tensor, d_azim: Tensor, d_radius: Tensor) -> Tensor:
        """(B,4) relative pose in the encoding the loaded model was trained with (see class docstring)."""
        d_elev, d_azim, d_radius = (t.to(self.device, torch.float32) for t in (d_elev, d_azim, d_radius))
        azim = torch.deg2rad(d_azim)
        if self.stable:
            last = torch.full_like(d_radius, math.radians(90.0 + self._ref_elevation))
        else:
            last = d_radius
        return torch.stack([torch.deg2rad(d_elev), torch.sin(azim), torch.cos(azim), last], dim=-1)

    def _conditioning(self, d_elev: Tensor, d_azim: Tensor, d_radius: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention context (2B,1,D) and image latents (2B,4,h,w): conditional then all-zero unconditional."""
        if self._ref_token is None or self._ref_latent is None:
            raise RuntimeError("Zero123Prior.set_reference(image, elevation) must be called before sds/refine")
        n = d_elev.shape[0]
        pose = self.camera_embedding(d_elev, d_azim, d_radius).to(self.dtype)[:, None, :]
        token = self._components().camera_projection(torch.cat([self._ref_token.expand(n, -1, -1), pose], dim=-1))
        latent = self._ref_latent.expand(n, -1, -1, -1)
        return (torch.cat([token, torch.zeros_like(token)]), torch.cat([latent, torch.zeros_like(latent)]))

    def _guided_eps(self, noisy: Tensor, t: Tensor, context: Tensor, image_latents: Tensor) -> Tensor:
        x_in = torch.cat([torch.cat([noisy, noisy]), image_latents], dim=1)
        t_in = torch.cat([t, t])
        eps = self._components().unet(x_in, t_in, encoder_hidden_states=context).sample
        eps_cond, eps_uncond = eps.chunk(2)
        return eps_uncond + self.guidance_scale * (eps_cond - eps_uncond)

    # ------------------------------------------------------------------ Prior API
    @torch.no_grad()
    def set_reference(self, image: Tensor, elevation_deg: float) -> None:
        if self.c is None:
            self.setup(image.device)
        c = self._components()
        if image.dim() == 3:
            image = image[None]
        if image.shape[0] != 1:
            raise ValueError(f"set_reference takes one image (1,3,H,W), got {tuple(image.shape)}")
        x = self._to_256(image.float().clamp(0.0, 1.0))
        # The reference goes through PIL (uint8, truncated like torchvision's to_pil_image) into the repo's
        # CLIPImageProcessor (resize 224, centre crop, CLIP normalisation).
        from PIL import Image

        pixels = (x[0] * 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        clip_in = c.feature_extractor(images=[Image.fromarray(pixels)], return_tensors="pt").pixel_values
        embeds = c.image_encoder(clip_in.to(self.device, self.dtype)).image_embeds
        self._ref_token = embeds[:, None, :]
        self._ref_latent = self._encode(x) / c.vae.config.scaling_factor
        self._ref_elevation = float(elevation_deg)

    def sds(self, images: Tensor, d_elev: Tensor, d_azim: Tensor, d_radius: Tensor,
            step_ratio: float | None) -> SDSOutput:
        n = check_relative_views(d_elev, d_azim, d_radius, images.shape[0])
        latents = self._encode(self._to_256(images))
        ratio = step_ratio if self.anneal_timestep else None
        t = sds_timestep(ratio, self.num_train_timesteps, self.t_range, generator=self._t_gen)
        ts = torch.full((n,), t, dtype=torch.long, device=self.device)
        with torch.no_grad():
            context, image_latents = self._conditioning(d_elev, d_azim, d_radius)
            noise = self._randn(tuple(latents.shape))
            noisy = self._components().scheduler.add_noise(latents.detach(), noise, ts)
            eps = self._guided_eps(noisy, ts, context, image_latents)
            w = 1.0 - self._alphas_cumprod[t]
            grad = torch.nan_to_num(w * (eps.float() - noise.float()), nan=0.0, posinf=0.0, neginf=0.0)
        target = (latents.float() - grad).detach()
        loss = 0.5 * F.mse_loss(latents.float(), target, reduction="sum")
        return SDSOutput(loss=loss, timestep=t)

    @torch.no_grad()
    def _denoise(self, latents: Tensor | None, d_elev: Tensor, d_azim: Tensor, d_radius: Tensor,
                 strength: float, steps: int) -> Tensor:
        n = check_relative_views(d_elev, d_azim, d_radius)
        scheduler = self._components().scheduler
        scheduler.set_timesteps(int(steps))      # timesteps stay on the CPU: scheduler.step indexes CPU tables
        start = int(steps * strength) if latents is not None and strength > 0 else 0
        if start >= len(scheduler.timesteps):
            raise ValueError(f"strength {strength} leaves no denoising step out of {steps}")
        if start == 0 or latents is None:
            size = self.resolution // 8
            latents = self._randn((n, 4, size, size))
        else:
            t0 = scheduler.timesteps[start].repeat(n)
            latents = scheduler.add_noise(latents, self._randn(tuple(latents.shape)), t0)
        context, image_latents = self._conditioning(d_elev, d_azim, d_radius)
        for t in scheduler.timesteps[start:]:
            eps = self._guided_eps(latents, t.repeat(n).to(self.device), context, image_latents)
            latents = scheduler.step(eps, t, latents, eta=0.0).prev_sample
        return self._decode(latents)

    @torch.no_grad()
    def refine(self, images: Tensor, d_elev: Tensor, d_azim: Tensor, d_radius: Tensor, strength: float,
               steps: int = 50) -> Tensor:
        """DreamGaussian's ``refine``: larger ``strength`` means *less* noise (start later in the schedule).

        strength 0.8 with 50 steps starts at index 40 (t = 181) and runs 10 DDIM steps; strength 0 samples from
        pure noise like :meth:`novel_views`.
        """
        check_relative_views(d_elev, d_azim, d_radius, images.shape[0])
        latents = self._encode(self._to_256(images.float())) if strength > 0 else None
        return self._denoise(latents, d_elev, d_azim, d_radius, strength, steps)

    @torch.no_grad()
    def novel_views(self, d_elev: Tensor, d_azim: Tensor, d_radius: Tensor, steps: int = 50) -> Tensor:
        return self._denoise(None, d_elev, d_azim, d_radius, 0.0, steps)

    def __repr__(self) -> str:
        variant = "stable" if self.stable else "xl"
        return f"Zero123Prior(model={self.model!r}, pose={variant}, device={self.device}, dtype={self.dtype})"


