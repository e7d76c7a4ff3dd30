"""Training stages as LightningModules (imported lazily so one stage's dependencies never break the other)."""

from __future__ import annotations

from typing import Any

__all__ = ["GaussianStage"]


def __getattr__(name: str) -> Any:
    if name == "GaussianStage":
        from cg_lightning.stages.gaussian_stage import GaussianStage

        return GaussianStage
    raise AttributeError(f"module 'cg_lightning.stages' has no attribute {name!r}")
