"""Random novel-view cameras for stage 1, as a seeded, resumable stream of per-step batches.

Each step's views are a pure function of ``(seed, step)`` (a fresh NumPy generator seeded with both), so a run
resumed from a checkpoint at step k samples exactly the cameras the uninterrupted run sampled from step k on.
Ranges and clamping follow DreamGaussian (reference §2.5): integer elevation offsets in ``[min_ver', max_ver')``
with the range clamped so the absolute elevation stays within ±80°, integer azimuths in ``[-180, 180)``, radius
offset 0 and a black background with probability 0.5 (white otherwise).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from cg_lightning.errors import ConfigError
from cg_lightning.schedules import Piecewise, Schedule, as_schedule

log = logging.getLogger(__name__)


@dataclass
class ViewBatch:
    """The novel views of one optimisation step (all tensors have a leading batch dimension B).

    ``elevation``/``azimuth``/``radius`` are absolute orbit coordinates (degrees, DG convention);
    ``d_elev``/``d_azim``/``d_radius`` the offsets relative to the reference view that the prior is conditioned on.
    """

    step: int
    elevation: Tensor
    azimuth: Tensor
    radius: Tensor
    d_elev: Tensor
    d_azim: Tensor
    d_radius: Tensor
    bg: Tensor          # (B,3) background colour per view, 0 (black) or 1 (white)
    resolution: int     # render size (square) for this step

    @property
    def size(self) -> int:
        return int(self.elevation.shape[0])

    def cameras(self, fovy_deg: float = 49.1) -> list:
        """Orbit cameras (``cg_lightning.cameras.Camera``) at this step's resolution."""
        from cg_lightning.cameras import orbit

        return [orbit(float(e), float(a), float(r), fovy_deg=fovy_deg, width=self.resolution, height=self.resolution)
                for e, a, r in zip(self.elevation.tolist(), self.azimuth.tolist(), self.radius.tolist(), strict=True)]


def _default_resolution() -> Schedule:
    return Piecewise([128, 256, 512], [0.3, 0.6])


class ViewSampler:
    """Samples ``batch_size`` random orbit views per step (DG: 1, ContrastiveGaussian: 2)."""

    def __init__(self, batch_size: int = 1, min_ver: int = -30, max_ver: int = 30, min_hor: int = -180,
                 max_hor: int = 180, max_abs_elevation: float = 80.0, radius: float = 2.0,
                 min_radius_offset: float = 0.0, max_radius_offset: float = 0.0, invert_bg_prob: float = 0.5,
                 resolution: Schedule | int | None = None, seed: int = 0) -> None:
        if batch_size < 1:
            raise ConfigError(f"views.batch_size must be >= 1, got {batch_size}")
        if not min_ver < max_ver or not min_hor < max_hor:
            raise ConfigError(f"empty camera range: ver [{min_ver}, {max_ver}), hor [{min_hor}, {max_hor})")
        if not 0.0 <= invert_bg_prob <= 1.0:
            raise ConfigError(f"views.invert_bg_prob must be in [0, 1], got {invert_bg_prob}")
        if min_radius_offset > max_radius_offset or radius + min_radius_offset <= 0:
            raise ConfigError("views radius offsets must satisfy min <= max and keep the radius positive")
        self.batch_size = int(batch_size)
        self.min_ver, self.max_ver, self.min_hor, self.max_hor = int(min_ver), int(max_ver), int(min_hor), int(max_hor)
        self.max_abs_elevation = float(max_abs_elevation)
        self.radius = float(radius)
        self.min_radius_offset, self.max_radius_offset = float(min_radius_offset), float(max_radius_offset)
        self.invert_bg_prob = float(invert_bg_prob)
        self.resolution = as_schedule(resolution if resolution is not None else _default_resolution())
        self.seed = int(seed)

    def elevation_offset_range(self, reference_elevation: float) -> tuple[int, int]:
        """Half-open integer range of elevation offsets, clamped as in DG so |elev + offset| <= max_abs_elevation."""
        e, lim = float(reference_elevation), self.max_abs_elevation
        lo = max(min(self.min_ver, self.min_ver - e), -lim - e)
        hi = min(max(self.max_ver, self.max_ver - e), lim - e)
        lo_i, hi_i = math.ceil(lo), math.ceil(hi)  # integers v with lo <= v < hi
        if hi_i <= lo_i:
            raise ConfigError(f"no valid elevation offset for reference elevation {e}: range [{lo}, {hi})")
        return lo_i, hi_i

    def resolution_at(self, step: int, total_steps: int) -> int:
        return int(round(self.resolution(step, total_steps)))

    def sample(self, step: int, total_steps: int, reference_elevation: float = 0.0) -> ViewBatch:
        """The views of the 0-based ``step``; identical for identical ``(seed, step)``."""
        rng = np.random.default_rng([self.seed, int(step)])
        b = self.batch_size
        lo, hi = self.elevation_offset_range(reference_elevation)
        ver = rng.integers(lo, hi, size=b)
        hor = rng.integers(self.min_hor, self.max_hor, size=b)
        if self.max_radius_offset > self.min_radius_offset:
            d_rad = rng.uniform(self.min_radius_offset, self.max_radius_offset, size=b)
        else:
            d_rad = np.full(b, self.min_radius_offset)
        black = rng.random(size=b) < self.invert_bg_prob
        ver_t = torch.as_tensor(ver, dtype=torch.float32)
        hor_t = torch.as_tensor(hor, dtype=torch.float32)
        rad_t = torch.as_tensor(d_rad, dtype=torch.float32)
        bg = torch.as_tensor(~black, dtype=torch.float32)[:, None].expand(b, 3).contiguous()
        return ViewBatch(step=int(step), elevation=ver_t + float(reference_elevation), azimuth=hor_t,
                         radius=rad_t + self.radius, d_elev=ver_t, d_azim=hor_t, d_radius=rad_t, bg=bg,
                         resolution=self.resolution_at(step, total_steps))


class ViewStream(IterableDataset):
    """Endless stream of :class:`ViewBatch` starting at the step returned by ``start_step()``.

    ``start_step`` is read when iteration begins (after Lightning restored a checkpoint), so a resumed fit
    continues with the cameras of the step it stopped at. The Trainer's ``max_steps`` ends the stream.
    """

    def __init__(self, sampler: ViewSampler, total_steps: int, reference_elevation: float,
                 start_step: Callable[[], int]) -> None:
        super().__init__()
        self.sampler, self.total_steps = sampler, int(total_steps)
        self.reference_elevation, self.start_step = float(reference_elevation), start_step

    def __iter__(self) -> Iterator[ViewBatch]:
        step = int(self.start_step())
        while True:
            yield self.sampler.sample(step, self.total_steps, self.reference_elevation)
            step += 1


def view_dataloader(sampler: ViewSampler, total_steps: int, reference_elevation: float,
                    start_step: Callable[[], int]) -> DataLoader:
    """The endless per-step camera stream of a stage as Lightning's train dataloader.

    Generated in-process (a few random numbers per step), so workers would only add overhead.
    """
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    stream = ViewStream(sampler, total_steps, reference_elevation, start_step=start_step)
    return DataLoader(stream, batch_size=None, num_workers=0)


def check_max_steps(trainer: Any, steps: int, stage: str) -> None:
    """The camera stream never ends: the Trainer must stop at ``max_steps`` (and should equal the stage's steps)."""
    max_steps = trainer.max_steps
    if max_steps is None or max_steps < 0:
        raise ConfigError(f"{stage} streams cameras without end: build the Trainer with max_steps=stage.steps")
    if max_steps != steps:
        log.warning("%s: trainer.max_steps=%d differs from %s.steps=%d (schedules use %s.steps)",
                    stage, max_steps, stage, steps, stage)
