"""Everything the pipeline steps of one job share: config, directories, device, loggers, lazily built prior."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from cg_lightning.runtime.layout import JobLayout
from cg_lightning.runtime.loggers import JobLoggers
from cg_lightning.runtime.state import JobState

log = logging.getLogger(__name__)


@dataclass
class JobContext:
    cfg: DictConfig
    layout: JobLayout
    device: torch.device
    loggers: JobLoggers
    state: JobState
    metrics: dict[str, float] = field(default_factory=dict)
    reference_rgba: np.ndarray | None = None     # (H,W,4) uint8, set by the input step
    _prior: Any = None

    @property
    def output_dir(self) -> Path:
        return self.layout.root

    @property
    def source_layout(self) -> JobLayout | None:
        """Layout of ``from_run`` (a finished job whose outputs later steps may reuse), if configured."""
        src = self.cfg.get("from_run")
        return JobLayout(Path(src)) if src else None

    def find_output(self, attr: str) -> Path | None:
        """An output of this job, else the same output of ``from_run``; None if neither has it."""
        for layout in (self.layout, self.source_layout):
            if layout is not None and getattr(layout, attr).is_file():
                return getattr(layout, attr)
        return None

    def prior(self):
        """The diffusion prior, built once per job and shared by both stages (it never enters a checkpoint)."""
        if self._prior is None:
            from cg_lightning.data.reference import ReferenceImage

            if self.reference_rgba is None:
                raise RuntimeError("the input step must run before the prior is built")
            prior = instantiate(self.cfg.prior)
            prior.setup(self.device)
            ref = ReferenceImage.from_rgba(self.reference_rgba, elevation=float(self.cfg.elevation))
            prior.set_reference(ref.rgb(prior.resolution).to(self.device), float(self.cfg.elevation))
            self._prior = prior
        return self._prior

    def record(self, metrics: dict[str, float]) -> None:
        self.metrics.update(metrics)
