"""Score distillation from the diffusion prior on the step's novel-view renders (``prior.sds``)."""

from __future__ import annotations

from torch import Tensor

from cg_lightning.errors import ConfigError
from cg_lightning.losses.base import LossContext, LossTerm


class SDSLoss(LossTerm):
    """``prior.sds(images, d_elev, d_azim, d_radius, step_ratio=r).loss``; logs the diffusion timestep."""

    def forward(self, ctx: LossContext, logs: dict[str, float]) -> Tensor:
        if ctx.prior is None:
            raise ConfigError("the SDS loss needs a prior; set prior=... or remove loss.sds")
        v = ctx.views
        out = ctx.prior.sds(ctx.novel_images, v.d_elev, v.d_azim, v.d_radius, step_ratio=ctx.ratio)
        if out.timestep is not None:
            logs["timestep"] = float(out.timestep)
        return out.loss
