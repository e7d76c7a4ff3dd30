"""Reference-view losses: MSE between the reference-camera render and the input image / mask.

DreamGaussian: ``1e4 * r * MSE(rgb, I_ref) + 1e3 * r * MSE(alpha, M_ref)`` at the reference size; the ``r`` ramp
is the weight schedule (``LinearRamp(0, 1e4)`` / ``LinearRamp(0, 1e3)``) given in the loss config.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from cg_lightning.losses.base import LossContext, LossTerm


class ReferenceRGBLoss(LossTerm):
    """MSE of the reference-view render (white background) against the input RGB on white."""

    def forward(self, ctx: LossContext, logs: dict[str, float]) -> Tensor:
        return F.mse_loss(ctx.ref_render, ctx.ref_rgb)


class ReferenceAlphaLoss(LossTerm):
    """MSE of the reference-view accumulated opacity against the input alpha mask."""

    def forward(self, ctx: LossContext, logs: dict[str, float]) -> Tensor:
        return F.mse_loss(ctx.ref_alpha_render, ctx.ref_alpha)
