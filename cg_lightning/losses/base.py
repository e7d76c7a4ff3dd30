"""Loss terms as small Hydra components: a raw loss plus a step-scheduled weight.

A term returns its raw value, the weight used at this step and the weighted value, so that every term can be
logged both ways (``stage1/loss/<name>`` and ``stage1/loss/<name>_w``). Terms are plain Python objects, not
``nn.Module``s: anything they hold (LPIPS) stays out of the Gaussian checkpoint, like the prior.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from cg_lightning.data.views import ViewBatch
from cg_lightning.errors import ConfigError
from cg_lightning.schedules import Schedule, as_schedule, step_ratio


@dataclass
class LossContext:
    """Everything a loss term may look at in one stage-1 step.

    Images are (B,C,H,W) in [0,1]. ``ref_render``/``ref_alpha_render`` are the Gaussians seen from the reference
    camera at the reference size; ``novel_images`` the step's novel-view renders (with grad).
    """

    step: int
    total_steps: int
    ref_rgb: Tensor
    ref_alpha: Tensor
    ref_render: Tensor
    ref_alpha_render: Tensor
    novel_images: Tensor
    views: ViewBatch
    prior: Any = None

    @property
    def ratio(self) -> float:
        return step_ratio(self.step, self.total_steps)


@dataclass
class LossOutput:
    """``raw`` and ``weighted`` are None when the weight is 0 at this step (the term was not evaluated)."""

    raw: Tensor | None
    weight: float
    weighted: Tensor | None
    logs: dict[str, float] = field(default_factory=dict)


class LossTerm:
    """Base class: subclasses implement :meth:`forward` returning the raw (unweighted) scalar loss."""

    def __init__(self, weight: float | Schedule = 1.0) -> None:
        self.weight = as_schedule(weight)

    def setup(self, device: torch.device) -> None:
        """Build or move helper models (idempotent); called once the stage knows its device."""

    def forward(self, ctx: LossContext, logs: dict[str, float]) -> Tensor:
        raise NotImplementedError

    def __call__(self, ctx: LossContext) -> LossOutput:
        w = float(self.weight(ctx.step, ctx.total_steps))
        if w == 0.0:
            return LossOutput(raw=None, weight=0.0, weighted=None)
        logs: dict[str, float] = {}
        raw = self.forward(ctx, logs)
        return LossOutput(raw=raw, weight=w, weighted=w * raw, logs=logs)


def as_loss_terms(losses: Mapping[str, Any] | None) -> dict[str, LossTerm]:
    """Normalise what ``hydra.utils.instantiate(cfg.loss)`` returns into ``{name: LossTerm}``.

    ``None`` entries are dropped, so an experiment can disable a term with ``loss.qa_triplet: null``.
    """
    if losses is None:
        return {}
    if not isinstance(losses, Mapping) and not hasattr(losses, "items"):
        raise ConfigError(f"losses must be a mapping name -> loss term, got {type(losses).__name__}")
    terms: dict[str, LossTerm] = {}
    for name, term in losses.items():
        if term is None:
            continue
        if not isinstance(term, LossTerm):
            raise ConfigError(f"loss '{name}' is not a LossTerm (got {type(term).__name__}); "
                              "did its config miss a _target_?")
        terms[str(name)] = term
    return terms
