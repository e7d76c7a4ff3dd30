"""Typed schema of the top-level config.

Registered in Hydra's ConfigStore as ``run_schema`` and listed first in ``conf/config.yaml``'s defaults, so a
misspelled top-level key (in an experiment file or on the command line) fails at compose time. Component configs
(``_target_`` nodes) are checked against their constructor signatures by :mod:`cg_lightning.config.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

ALL_STAGES = ("stage1", "mesh", "stage2", "export", "evaluate")


@dataclass
class PathsConfig:
    root_dir: str = MISSING
    output_root: str = MISSING
    output_dir: str = MISSING
    cache_dir: str = MISSING


@dataclass
class RendererConfig:
    gaussian: str = "auto"
    mesh: str = "auto"


@dataclass
class CallbacksConfig:
    checkpoint_every_n_steps: int = 50
    image_log_every_n_steps: int = 100


@dataclass
class RunConfig:
    image: str = MISSING
    elevation: float = 0.0
    seed: int = 0
    experiment_name: str = "custom"
    stages: list[str] = field(default_factory=lambda: list(ALL_STAGES))
    resume: str = "auto"
    on_mismatch: str = "error"
    from_run: Optional[str] = None  # noqa: UP045 - OmegaConf 2.3 does not understand `str | None`
    device: str = "auto"
    tags: list[str] = field(default_factory=list)
    perceptual_pretrained: bool = True
    paths: PathsConfig = field(default_factory=PathsConfig)
    renderer: RendererConfig = field(default_factory=RendererConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    # component groups: `_target_` configs, validated against their constructors
    preprocess: Any = None
    superres: Any = None
    prior: Any = None
    loss: Any = None
    stage1: Any = None
    stage2: Any = None
    mesh: Any = None
    evaluation: Any = None
    trainer: Any = None
    logger: Any = None


def register_schemas() -> None:
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
