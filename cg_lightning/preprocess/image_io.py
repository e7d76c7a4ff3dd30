"""Read the user's input image robustly into uint8 RGB(A), with one clear error for every unusable file.

Handled: grayscale (L, LA, 1-bit), palette (with or without transparency), 16/32-bit integer and float modes
(scaled to 8 bit), CMYK/YCbCr/LAB JPEGs (-> RGB), EXIF orientation (applied), animated GIF/WebP/APNG (the *first
frame* is used), fully opaque alpha (dropped: the image then goes through background removal like any RGB
photo), fully transparent alpha (error: nothing to reconstruct).

Size limits (documented behaviour, not silent failure):
* images with more than ``MAX_INPUT_PIXELS`` (100 MP) are refused (decompression-bomb guard);
* images whose longer side exceeds ``MAX_SIDE`` (4096 px) are downscaled to it (Lanczos, alpha-aware) - the
  pipeline works at 256-1024 px, so nothing is lost;
* images smaller than ``MIN_SIDE`` (8 px) on a side are refused (1x1 "images" carry no object).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cg_lightning.errors import InputImageError
from cg_lightning.utils.atomic import atomic_path

MAX_INPUT_PIXELS = 100_000_000
MAX_SIDE = 4096
MIN_SIDE = 8


def _check_path(path: Path) -> None:
    if not path.exists():
        raise InputImageError(f"Input image not found: {path}")
    if path.is_dir():
        raise InputImageError(f"Input image path is a directory, not a file: {path}")
    if not os.access(path, os.R_OK):
        raise InputImageError(f"Input image is not readable (permissions): {path}")
    if path.stat().st_size == 0:
        raise InputImageError(f"Input image is an empty (0-byte) file: {path}")


def _to_8bit(img: Image.Image) -> np.ndarray:
    """Single-channel high-bit-depth or float image -> uint8 (H,W)."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
        return np.clip(np.round(arr.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    if img.mode == "F":
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0
        return np.clip(np.round(np.nan_to_num(arr) * scale), 0, 255).astype(np.uint8)
    return np.clip(arr, 0, 255).astype(np.uint8)


def _to_rgba_array(img: Image.Image) -> tuple[np.ndarray, bool]:
    """Any PIL mode -> (H,W,4) uint8 and whether the file carried an alpha channel."""
    mode = img.mode
    if mode == "P":
        has_alpha = "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
        mode = img.mode
    elif mode == "PA":
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("I", "F") or mode.startswith("I;16"):
        gray = _to_8bit(img)
        return np.dstack([gray, gray, gray, np.full_like(gray, 255)]), False
    if mode == "RGBA":
        return np.asarray(img).copy(), True
    if mode in ("LA", "La", "RGBa"):
        return np.asarray(img.convert("RGBA")).copy(), True
    rgb = np.asarray(img.convert("RGB"))    # L, 1, RGB, CMYK, YCbCr, LAB, RGBX, ...
    return np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]), False


def load_rgba(path: str | os.PathLike) -> tuple[np.ndarray, bool]:
    """(H,W,4) uint8 RGBA and ``has_alpha`` (False for RGB files and for fully opaque alpha channels)."""
    if not str(path).strip():
        raise InputImageError("No input image given (image= is empty): add image=<path to a picture> to the command")
    path = Path(path).expanduser()
    _check_path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
            w, h = img.size
            if w * h > MAX_INPUT_PIXELS:
                raise InputImageError(f"Input image {path} is {w}x{h} ({w * h / 1e6:.0f} MP), above the "
                                      f"{MAX_INPUT_PIXELS / 1e6:.0f} MP limit; downscale it first")
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)          # animated GIF/WebP/APNG: the first frame is the input
            if img.format == "JPEG" and max(w, h) > 2 * MAX_SIDE:
                img.draft("RGB", (MAX_SIDE, MAX_SIDE))   # decode huge JPEGs at a reduced scale directly
            img.load()
            img = ImageOps.exif_transpose(img)
            rgba, has_alpha = _to_rgba_array(img)
    except InputImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise InputImageError(f"Input file is not a readable image: {path} ({exc})") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InputImageError(f"Input image is corrupt or truncated: {path} ({exc})") from exc
    h, w = rgba.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InputImageError(f"Input image {path} is only {w}x{h} px; at least {MIN_SIDE}x{MIN_SIDE} is needed")
    if has_alpha:
        alpha = rgba[..., 3]
        if alpha.max() == 0:
            raise InputImageError(f"Input image {path} is fully transparent (alpha is 0 everywhere): there is "
                                  f"no object to reconstruct")
        if alpha.min() == 255:
            has_alpha = False      # an opaque alpha channel carries no mask -> treat like an RGB photo
    if max(h, w) > MAX_SIDE:
        scale = MAX_SIDE / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgba = np.asarray(Image.fromarray(rgba, "RGBA").resize(size, Image.Resampling.LANCZOS)).copy()
    return rgba, has_alpha


def load_image(path: str | os.PathLike) -> np.ndarray:
    """uint8 (H,W,4) RGBA when the file has a usable alpha channel, else (H,W,3) RGB.

    RGB results go through background removal; RGBA results are used as they are (only recentred).
    """
    rgba, has_alpha = load_rgba(path)
    return rgba if has_alpha else np.ascontiguousarray(rgba[..., :3])


def save_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a uint8 (H,W), (H,W,3) or (H,W,4) array as an image file (format from the suffix), atomically."""
    if image.dtype != np.uint8:
        raise ValueError(f"save_image expects uint8, got {image.dtype}")
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    return path
