"""A tiny, randomly initialised Zero123 in the public repos' folder layout (``prior=tiny``).

It exists so the whole pipeline (and every test) can run the *real* Zero123 code path on a CPU in seconds: the
tiny model is written once to ``<cache>/tiny_zero123_v<N>_seed<S>`` (deterministic for a seed) and then loaded
by :class:`~cg_lightning.priors.zero123.Zero123Prior` exactly like a downloaded model. Its outputs are noise-like
images - it only checks plumbing, shapes, gradients and determinism, never quality.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from cg_lightning.priors.base import DEFAULT_T_RANGE
from cg_lightning.priors.zero123 import COMPONENTS, PoseEncoding, Zero123Prior, _camera_projection_class

TINY_VERSION = 2     # bump whenever the tiny architecture changes (cached folders are keyed by it)
TINY_EMBED_DIM = 32


def save_tiny_zero123(folder: str | os.PathLike, seed: int = 0, embed_dim: int = TINY_EMBED_DIM) -> Path:
    """Write a tiny random Zero123 (unet/ vae/ image_encoder/ feature_extractor/ scheduler/ clip_camera_projection/
    + model_index.json) into ``folder``; same seed -> identical weights. About 1 s on a CPU."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=32, in_channels=8, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=embed_dim, attention_head_dim=4, norm_num_groups=8)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, sample_size=256, layers_per_block=1,
            block_out_channels=(4, 4, 8, 8), norm_num_groups=4,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=224,
            patch_size=32, projection_dim=embed_dim))
        projection = _camera_projection_class()(embedding_dim=embed_dim, additional_embeddings=4)
    # zero123-xl's scheduler config (bennyguo/zero123-xl-diffusers, mirrored by ashawkey's repos)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                              steps_offset=1, prediction_type="epsilon", timestep_spacing="leading")
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    encoder.save_pretrained(folder / "image_encoder")
    CLIPImageProcessor().save_pretrained(folder / "feature_extractor")
    scheduler.save_pretrained(folder / "scheduler")
    projection.save_pretrained(folder / "clip_camera_projection")
    index = {"_class_name": "Zero123Pipeline", "_note": f"tiny random test model, seed {seed}",
             "clip_camera_projection": ["zero123", "CLIPCameraProjection"],
             "feature_extractor": ["transformers", "CLIPImageProcessor"],
             "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
             "scheduler": ["diffusers", "DDIMScheduler"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def ensure_tiny_zero123(cache_dir: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """The cached tiny model folder, built on first use (atomic rename: safe with parallel test workers)."""
    from cg_lightning.weights import cache_root

    target = cache_root(cache_dir) / f"tiny_zero123_v{TINY_VERSION}_seed{seed}"
    if all((target / c).is_dir() for c in COMPONENTS):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save_tiny_zero123(tmp, seed=seed)
        tmp.chmod(0o755)                      # mkdtemp makes it private; the cache may be shared
        try:
            os.replace(tmp, target)
        except OSError:
            if not all((target / c).is_dir() for c in COMPONENTS):   # not a concurrent winner: a broken leftover
                shutil.rmtree(target, ignore_errors=True)
                os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


class TinyZero123Prior(Zero123Prior):
    """``prior=tiny``: Zero123Prior on a tiny random model built into the cache (fixed ``model_seed``)."""

    def __init__(self, model_seed: int = 0, cache_dir: str | None = None, pose_encoding: PoseEncoding = "xl",
                 guidance_scale: float = 5.0, t_range: tuple[float, float] | list[float] = DEFAULT_T_RANGE,
                 anneal_timestep: bool = True, dtype: str = "auto", seed: int | None = None) -> None:
        super().__init__(model="<tiny>", pose_encoding=pose_encoding, guidance_scale=guidance_scale,
                         t_range=t_range, anneal_timestep=anneal_timestep, dtype=dtype, seed=seed,
                         allow_download=False)
        self.model_seed = int(model_seed)
        self.cache_dir = cache_dir

    def _model_folder(self) -> Path:
        folder = ensure_tiny_zero123(self.cache_dir, self.model_seed)
        self.model = str(folder)
        return folder
