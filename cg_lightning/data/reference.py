"""The single input view that stage 1 reconstructs: RGB composited on white, its alpha mask and its elevation.

DreamGaussian composites at load resolution (``rgb * a + (1 - a)``) and only then resizes bilinearly
(``align_corners=False``) to the loss resolution; we keep that order so that edge pixels match the anchor.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cg_lightning.errors import InputImageError


def _as_float_hwc(image: np.ndarray | Tensor) -> Tensor:
    """uint8 / float (H,W,4|3) -> float32 tensor in [0,1] with 4 channels (opaque alpha when missing)."""
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint8:
            t = torch.from_numpy(image.astype(np.float32) / 255.0)
        elif np.issubdtype(image.dtype, np.floating):
            t = torch.from_numpy(image.astype(np.float32))
        else:
            raise InputImageError(f"reference image must be uint8 or float, got dtype {image.dtype}")
    elif isinstance(image, Tensor):
        t = image.detach().to("cpu")
        t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    else:
        raise InputImageError(f"reference image must be a numpy array or a tensor, got {type(image).__name__}")
    if t.ndim != 3 or t.shape[-1] not in (3, 4):
        raise InputImageError(f"reference image must have shape (H, W, 4) RGBA or (H, W, 3), got {tuple(t.shape)}")
    if t.shape[0] < 2 or t.shape[1] < 2:
        raise InputImageError(f"reference image is too small: {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise InputImageError("reference image contains NaN or inf values")
    if t.min() < 0.0 or t.max() > 1.0:
        raise InputImageError(f"float reference image must lie in [0, 1], got range [{t.min():.3g}, {t.max():.3g}]")
    if t.shape[-1] == 3:
        t = torch.cat([t, torch.ones_like(t[..., :1])], dim=-1)
    return t


class ReferenceImage:
    """Input view for the reference losses, the QA-Triplet anchor and the prior's conditioning.

    ``rgb`` (3,H,W) is already composited on white; ``alpha`` (1,H,W). ``elevation`` is in DreamGaussian's
    convention (degrees, negative = camera above the object). Deliberately not a dataclass: Hydra's
    ``instantiate(cfg, reference=...)`` would turn a dataclass argument into a DictConfig.
    """

    def __init__(self, rgb: Tensor, alpha: Tensor, elevation: float = 0.0) -> None:
        if rgb.ndim != 3 or rgb.shape[0] != 3 or alpha.shape != (1, *rgb.shape[1:]):
            raise InputImageError(f"reference rgb must be (3,H,W) and alpha (1,H,W), got {tuple(rgb.shape)} "
                                  f"and {tuple(alpha.shape)}")
        self.rgb, self.alpha, self.elevation = rgb.float(), alpha.float(), float(elevation)
        self._cache: dict[tuple, Tensor] = {}

    def __repr__(self) -> str:
        return f"ReferenceImage({self.height}x{self.width}, elevation={self.elevation})"

    @classmethod
    def from_rgba(cls, image: np.ndarray | Tensor, elevation: float = 0.0) -> ReferenceImage:
        """Build from an (H,W,4) RGBA (uint8 or float in [0,1]); (H,W,3) is taken as fully opaque."""
        t = _as_float_hwc(image)
        alpha = t[..., 3:4]
        if float(alpha.max()) <= 0.0:
            raise InputImageError("the reference image's alpha mask is empty (no foreground); "
                                  "check background removal or pass an RGBA image with an object")
        rgb = t[..., :3] * alpha + (1.0 - alpha)
        return cls(rgb=rgb.permute(2, 0, 1).contiguous(), alpha=alpha.permute(2, 0, 1).contiguous(),
                   elevation=float(elevation))

    @property
    def height(self) -> int:
        return int(self.rgb.shape[-2])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[-1])

    def _resized(self, which: str, size: int | tuple[int, int]) -> Tensor:
        hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        key = (which, hw)
        if key not in self._cache:
            src = (self.rgb if which == "rgb" else self.alpha)[None]
            if tuple(src.shape[-2:]) != hw:
                src = F.interpolate(src, size=hw, mode="bilinear", align_corners=False)
            self._cache[key] = src.contiguous()
        return self._cache[key]

    def rgb_at(self, size: int | tuple[int, int]) -> Tensor:
        """(1,3,h,w) RGB on white at ``size`` (int = square)."""
        return self._resized("rgb", size)

    def alpha_at(self, size: int | tuple[int, int]) -> Tensor:
        """(1,1,h,w) alpha mask at ``size`` (int = square)."""
        return self._resized("alpha", size)
