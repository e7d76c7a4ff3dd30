"""The output tree of one job, in one place (README "Outputs" documents the same tree)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class JobLayout:
    root: Path

    # inputs
    @property
    def preprocessed(self) -> Path:
        return self.root / "input" / "preprocessed_rgba.png"

    @property
    def reference(self) -> Path:
        """The reference image the stages fit (after super-resolution when enabled)."""
        return self.root / "input" / "reference_rgba.png"

    # stage 1
    @property
    def gaussians_ply(self) -> Path:
        return self.root / "stage1" / "point_cloud.ply"

    @property
    def stage1_turntable(self) -> Path:
        return self.root / "stage1" / "turntable.mp4"

    # mesh extraction + bake
    @property
    def coarse_obj(self) -> Path:
        return self.root / "mesh" / "coarse.obj"

    @property
    def coarse_glb(self) -> Path:
        return self.root / "mesh" / "coarse.glb"

    # stage 2
    @property
    def model_obj(self) -> Path:
        return self.root / "stage2" / "model.obj"

    @property
    def model_glb(self) -> Path:
        return self.root / "stage2" / "model.glb"

    @property
    def stage2_turntable(self) -> Path:
        return self.root / "stage2" / "turntable.mp4"

    # results
    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def resolved_config(self) -> Path:
        return self.root / "config_resolved.yaml"
