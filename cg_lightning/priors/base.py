"""The interface every 2D prior offers to the stages (Zero123, its tiny test twin, the ground-truth oracle).

Stages only see :class:`Prior`; which network (or renderer) stands behind it is a Hydra choice (``prior=...``).
Priors are plain Python objects, never ``nn.Module`` attributes of a LightningModule, so their (frozen, large)
weights stay out of checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

# DreamGaussian's SDS timestep range as fractions of the training timesteps: [0.02, 0.98] -> t in [20, 980].
DEFAULT_T_RANGE: tuple[float, float] = (0.02, 0.98)


@dataclass
class SDSOutput:
    """Result of one score-distillation step.

    ``loss`` is a scalar whose gradient w.r.t. the input images is the SDS gradient (its value is not meaningful
    as a metric); ``timestep`` is the diffusion timestep used (``None`` for priors without one, e.g. the oracle).
    """

    loss: Tensor
    timestep: int | None


@runtime_checkable
class Prior(Protocol):
    """A novel-view prior: guidance (``sds``), image-to-image refinement and sampling from noise.

    All view arguments are *relative to the reference view*: ``d_elev``/``d_azim`` in degrees and ``d_radius``
    as a radius offset, each a (B,) tensor. Images are float in [0, 1], (B, 3, H, W).
    """

    resolution: int

    def setup(self, device: torch.device) -> None:
        """Load or build the weights on ``device`` (idempotent; cheap when already done)."""
        ...

    def set_reference(self, image: Tensor, elevation_deg: float) -> None:
        """Condition on the input view: ``image`` (1,3,H,W) RGB composited on white, its elevation in degrees."""
        ...

    def sds(self, images: Tensor, d_elev: Tensor, d_azim: Tensor, d_radius: Tensor,
            step_ratio: float | None) -> SDSOutput:
        """Score-distillation loss for rendered ``images`` (with grad) at training progress ``step_ratio``."""
        ...

    def refine(self, images: Tensor, d_elev: Tensor, d_azim: Tensor, d_radius: Tensor, strength: float,
               steps: int = 50) -> Tensor:
        """Partially noise ``images`` and denoise them back (no grad); returns (B,3,resolution,resolution)."""
        ...

    def novel_views(self, d_elev: Tensor, d_azim: Tensor, d_radius: Tensor, steps: int = 50) -> Tensor:
        """Sample complete novel views from pure noise (no grad); returns (B,3,resolution,resolution)."""
        ...


def sds_timestep(step_ratio: float | None, num_train_timesteps: int = 1000,
                 t_range: tuple[float, float] = DEFAULT_T_RANGE, generator: torch.Generator | None = None) -> int:
    """DreamGaussian's SDS timestep: annealed ``clip(round((1 - r) * T), t_min, t_max)``, or uniform when r is None.

    With T = 1000 and the default range, t runs from 980 (start of training) down to 20 (end); the uniform draw
    covers [t_min, t_max] inclusive, like the reference's ``randint(min_step, max_step + 1)``.
    """
    t_min = int(t_range[0] * num_train_timesteps)
    t_max = int(t_range[1] * num_train_timesteps)
    if step_ratio is None:
        return int(torch.randint(t_min, t_max + 1, (1,), generator=generator).item())
    return int(np.clip(np.round((1.0 - float(step_ratio)) * num_train_timesteps), t_min, t_max))


def check_relative_views(d_elev: Tensor, d_azim: Tensor, d_radius: Tensor, batch: int | None = None) -> int:
    """Validate the (B,) relative-view tensors and return B (a clear error beats a broadcast surprise later)."""
    sizes = {tuple(t.shape) for t in (d_elev, d_azim, d_radius)}
    if len(sizes) != 1 or len(next(iter(sizes))) != 1:
        raise ValueError(f"d_elev, d_azim, d_radius must be 1-D tensors of equal length, got shapes {sorted(sizes)}")
    n = d_elev.shape[0]
    if batch is not None and n != batch:
        raise ValueError(f"got {batch} images but {n} relative views")
    return n
