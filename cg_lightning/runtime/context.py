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

from cg_lightning.evaluation.render_memo import RenderMemo
from cg_lightning.runtime.layout import JobLayout
from cg_lightning.runtime.loggers import JobLoggers
from cg_lightning.runtime.state import JobState

log = logging.getLogger(__name__)


def with_runtime_objects(node: DictConfig, **objects: Any) -> Any:
    """Instantiate a stage config with live objects (reference image, prior, mesh, renderer).

    The objects are passed to the constructor directly, not through Hydra: Hydra would turn dataclass instances
    (ReferenceImage, Mesh) into configs. Nested ``_target_`` nodes are left for the stage to build.
    """
    return instantiate(node, _partial_=True, _recursive_=False)(**objects)


@dataclass
class JobContext:
    cfg: DictConfig
    layout: JobLayout
    device: torch.device
    loggers: JobLoggers
    state: JobState
    metrics: dict[str, float] = field(default_factory=dict)
    reference_rgba: np.ndarray | None = None     # (H,W,4) uint8, set by the input step
    renders: RenderMemo = field(default_factory=RenderMemo)   # export's frames reused by the evaluation
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
        """The diffusion prior, built once per job and shared by both stages.

        The stages call ``setup(device)`` (idempotent, loads weights lazily) and ``set_reference``; the prior is never
        a module attribute, so it never enters a checkpoint.
        """
        if self._prior is None:
            self._prior = instantiate(self.cfg.prior)
        return self._prior

    def record(self, metrics: dict[str, float]) -> None:
        self.metrics.update(metrics)
