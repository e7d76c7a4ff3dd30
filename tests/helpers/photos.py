"""Photo-like RGB test pictures: an object on a textured background, with lighting, shadow and sensor noise.

Background removal is judged on what users feed it (phone photos of an object on a table), not on flat synthetic
discs; these pictures are made procedurally so that tests need no downloaded data. The true object mask is
returned with each picture.
"""

from __future__ import annotations

import cv2
import numpy as np


def wood_table(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A warm wooden surface: wavy grain, plank seams, a light falloff from the top left, float RGB in [0, 1]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    warp = 6.0 * np.sin(xx / 37.0) + 3.0 * np.sin(yy / 23.0 + 1.3)
    grain = 0.5 + 0.5 * np.sin((yy + warp) / 3.1) * np.sin((yy + warp) / 17.0 + xx / 400.0)
    seams = (np.abs(((yy + warp * 0.3) % (h / 3.0)) - 2.0) < 1.5).astype(np.float32)
    base = np.array([0.55, 0.36, 0.20], np.float32)
    wood = base * (0.75 + 0.25 * grain[..., None]) * (1.0 - 0.35 * seams[..., None])
    light = 1.1 - 0.45 * np.hypot(yy / h, xx / w)[..., None]
    wall = (yy < h * 0.28)[..., None]           # a pale wall behind the table
    wall_colour = np.array([0.82, 0.80, 0.74], np.float32) * (0.9 + 0.1 * np.sin(xx / 90.0))[..., None]
    return np.clip(np.where(wall, wall_colour, wood * light), 0, 1)


def mug_photo(h: int = 384, w: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 RGB photo, bool object mask): a glossy blue mug with a handle standing on a wooden table."""
    rng = np.random.default_rng(seed)
    img = wood_table(h, w, rng)
    cx, top, bottom, half = w // 2, int(h * 0.30), int(h * 0.80), int(w * 0.13)
    shadow = np.zeros((h, w), np.float32)
    cv2.ellipse(shadow, (cx + 30, bottom), (int(half * 1.5), int(half * 0.35)), 0, 0, 360, 1.0, -1)
    shadow = cv2.GaussianBlur(shadow, (0, 0), 9)
    img *= 1.0 - 0.45 * shadow[..., None]
    mask = np.zeros((h, w), np.uint8)
    cv2.rectangle(mask, (cx - half, top), (cx + half, bottom), 1, -1)
    cv2.ellipse(mask, (cx, bottom), (half, int(half * 0.25)), 0, 0, 180, 1, -1)
    handle = np.zeros_like(mask)
    cv2.ellipse(handle, (cx + half, (top + bottom) // 2), (int(half * 0.55), int(half * 0.75)), 0, -90, 90, 1,
                int(half * 0.22))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    across = np.clip((xx - (cx - half)) / (2 * half), 0, 1)           # cylinder shading across the mug
    shade = 0.35 + 0.65 * np.sin(np.pi * (0.15 + 0.8 * across)) ** 1.5
    specular = np.exp(-((across - 0.3) / 0.05) ** 2) * 0.6
    colour = np.array([0.12, 0.28, 0.72], np.float32)
    mug = np.clip(colour * shade[..., None] + specular[..., None], 0, 1)
    body = (mask | handle) > 0
    img[body] = mug[body]
    rim = np.zeros_like(mask)
    cv2.ellipse(rim, (cx, top), (half, int(half * 0.25)), 0, 0, 360, 1, -1)
    img[rim > 0] = np.array([0.08, 0.16, 0.42], np.float32)            # the dark inside of the mug
    img += rng.normal(0, 0.025, img.shape).astype(np.float32)           # sensor noise
    photo = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    photo = cv2.GaussianBlur(photo, (0, 0), 0.8)                        # a lens is never perfectly sharp
    return photo, body | (rim > 0)


def save_jpeg(path, rgb: np.ndarray, quality: int = 90) -> None:
    """Write like a camera does (JPEG, RGB)."""
    from PIL import Image

    Image.fromarray(rgb).save(path, format="JPEG", quality=quality)
