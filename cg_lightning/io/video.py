"""Turntable videos: the orbit cameras and an atomic H.264 mp4 writer (imageio-ffmpeg's bundled ffmpeg).

Why imageio-ffmpeg: it ships a static ffmpeg binary in its wheel, so no system package is needed, and W&B plays the
resulting mp4 (``wandb.Video(path)``) without moviepy.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from itertools import chain
from pathlib import Path

import numpy as np

from cg_lightning.cameras import Camera, orbit
from cg_lightning.errors import OutputError
from cg_lightning.utils.atomic import atomic_path


def turntable_cameras(n: int, elevation_deg: float = 0.0, radius: float = 2.0, fovy_deg: float = 49.1,
                      size: int = 512) -> list[Camera]:
    """``n`` orbit cameras at one elevation, azimuths ``0, 360/n, ...`` (front view first), square ``size``."""
    if n < 1:
        raise ValueError(f"turntable needs at least one frame, got n={n}")
    return [orbit(elevation_deg, 360.0 * i / n, radius, fovy_deg, size, size) for i in range(n)]


def _as_frame(frame: np.ndarray) -> np.ndarray:
    """Validate an (H,W,3) uint8 frame and pad odd sizes by edge replication (yuv420p needs even sizes)."""
    arr = np.asarray(frame)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"video frames must be (H,W,3) uint8, got {arr.shape} {arr.dtype}")
    pad_h, pad_w = arr.shape[0] % 2, arr.shape[1] % 2
    if pad_h or pad_w:
        arr = np.pad(arr, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return np.ascontiguousarray(arr)


def write_mp4(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: int = 30, quality: int = 8) -> Path:
    """Encode ``frames`` ((H,W,3) uint8, consumed lazily) to an H.264/yuv420p mp4 at ``path`` (atomic).

    Frames with odd sizes are padded by one replicated row/column. ``quality`` is imageio-ffmpeg's 0-10 scale.
    """
    import imageio_ffmpeg

    path = Path(path)
    it = iter(frames)
    try:
        first = _as_frame(next(it))
    except StopIteration:
        raise ValueError("write_mp4 got no frames") from None
    h, w = first.shape[:2]
    with atomic_path(path, suffix=".mp4") as tmp:
        writer = imageio_ffmpeg.write_frames(str(tmp), (w, h), fps=fps, codec="libx264", pix_fmt_in="rgb24",
                                             pix_fmt_out="yuv420p", quality=quality, macro_block_size=1,
                                             ffmpeg_log_level="error")
        writer.send(None)  # start ffmpeg
        try:
            for frame in chain([first], it):
                arr = _as_frame(frame)
                if arr.shape[:2] != (h, w):
                    raise ValueError(f"all frames must have the same size: {arr.shape[:2]} != {(h, w)}")
                writer.send(arr)
        except BrokenPipeError as exc:
            raise OutputError(f"ffmpeg stopped while writing {path}: {exc}") from exc
        finally:
            writer.close()
    return path
