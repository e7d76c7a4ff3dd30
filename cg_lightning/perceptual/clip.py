"""CLIP image embeddings for the CLIP-similarity metric (kiui ``clip_sim`` protocol).

kiui's ``clip_sim`` (the metric DreamGaussian points to) uses the HF ``CLIPModel``
``laion/CLIP-ViT-bigG-14-laion2B-39B-b160k``, its ``CLIPProcessor`` on uint8 images, and cosine similarity of
L2-normalised image features. We load only the vision tower plus projection
(``CLIPVisionModelWithProjection``), which gives the same image features as ``CLIPModel.get_image_features``
without the text tower. ``model`` may be a Hub id or a local folder with ``config.json`` + weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cg_lightning.errors import MissingWeightsError, WrongWeightsError

DEFAULT_CLIP = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"


class CLIPImageEncoder:
    """``embed(images (B,3,H,W) in [0,1]) -> (B,D)`` unit-norm CLIP image embeddings; ``similarity(a, b)``.

    Args:
        model: Hub id (default ViT-bigG-14, as kiui) or a local folder in the Hub layout.
        dtype: ``auto`` (fp16 on CUDA, fp32 elsewhere), ``fp16`` or ``fp32``.
        allow_download: fetch from the Hub when not cached (ignored when HF_HUB_OFFLINE=1).
    """

    def __init__(self, model: str = DEFAULT_CLIP, dtype: str = "auto", allow_download: bool = True) -> None:
        self.model = str(model)
        self.dtype_name = dtype
        self.allow_download = allow_download
        self.encoder: Any = None
        self.processor: Any = None
        self.device: torch.device | None = None

    def _folder(self) -> Path:
        path = Path(self.model).expanduser()
        if path.is_dir():
            return path
        from cg_lightning.priors.zero123 import is_hf_repo_id
        from cg_lightning.weights import CLIP_PATTERNS, fetch_hint_for, resolve_hf_snapshot

        if not is_hf_repo_id(self.model):
            raise MissingWeightsError(f"CLIP model folder {self.model}", [str(path.resolve())],
                                      f"point the CLIP model to a folder with config.json + weights, or use a "
                                      f"Hub id such as {DEFAULT_CLIP} after `make weights`")
        return resolve_hf_snapshot(self.model, CLIP_PATTERNS, what=f"CLIP model '{self.model}'",
                                   required=("config.json",), allow_download=self.allow_download,
                                   fetch_hint=fetch_hint_for(self.model))

    def setup(self, device: torch.device | str) -> None:
        device = torch.device(device)
        if self.encoder is not None and self.device == device:
            return
        dtype = {"fp16": torch.float16, "fp32": torch.float32}.get(self.dtype_name)
        if dtype is None:
            dtype = torch.float16 if device.type == "cuda" else torch.float32
        if self.encoder is None:
            from transformers import AutoConfig, CLIPImageProcessor, CLIPVisionModelWithProjection
            from transformers.utils import logging as hf_logging

            folder = self._folder()
            verbosity = hf_logging.get_verbosity()
            try:
                config = AutoConfig.from_pretrained(folder)
                if config.model_type == "clip":
                    # a full CLIPModel repo: the image projection size is the top-level projection_dim
                    vision = config.vision_config
                    vision.projection_dim = config.projection_dim
                    config = vision
                hf_logging.set_verbosity_error()   # the unused text tower would be reported key by key
                self.encoder = CLIPVisionModelWithProjection.from_pretrained(folder, config=config, dtype=dtype)
            except (OSError, ValueError, RuntimeError, KeyError) as exc:
                raise WrongWeightsError(f"{folder} does not hold a loadable CLIP vision model: {exc}") from exc
            finally:
                hf_logging.set_verbosity(verbosity)
            try:
                self.processor = CLIPImageProcessor.from_pretrained(folder)
            except OSError:
                self.processor = CLIPImageProcessor()   # the standard 224 / bicubic / CLIP-mean preprocessing
            self.encoder.eval().requires_grad_(False)
        self.encoder.to(device=device, dtype=dtype)
        self.device, self.dtype = device, dtype

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """(B,3,H,W) float [0,1] -> (B,D) float32, L2-normalised (images go through uint8 like kiui)."""
        if self.encoder is None:
            self.setup(images.device)
        if images.dim() == 3:
            images = images[None]
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"CLIP expects (B,3,H,W) images, got {tuple(images.shape)}")
        pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
        batch = self.processor(images=[np.asarray(p) for p in pixels.numpy()], return_tensors="pt").pixel_values
        feats = self.encoder(pixel_values=batch.to(self.device, self.dtype)).image_embeds.float()
        return feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def similarity(self, a: Tensor, b: Tensor) -> Tensor:
        """Cosine similarity of every image in ``a`` with the matching (or single) image in ``b``: (B,)."""
        ea, eb = self.embed(a), self.embed(b)
        return (ea * eb).sum(-1)
