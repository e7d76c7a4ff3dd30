"""Shared fixtures: compose the real config tree, isolate caches/outputs, keep W&B offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

# never touch the network or a real W&B account from tests
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# One thread per process: tests start launch.py subprocesses and submitit jobs side by side on small CI machines.
# Measured on a 2-core machine (README, "CPU and GPU"): 2 threads help when the second core is idle (0.62-0.73x
# the wall time of 1) but are 2.3-7.5x slower than 1 when other busy processes compete for the cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


def pytest_configure(config):
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def compose(tmp_path):
    """compose(overrides) -> DictConfig of the real config, with outputs under tmp_path and HydraConfig set.

    Interpolations such as ``${hydra:runtime.output_dir}`` resolve as they do in a real run.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import cg_lightning.config  # noqa: F401

    def _compose(overrides: list[str] | None = None, *, run_dir: Path | None = None):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides or []), return_hydra_config=True)
        with open_dict(cfg):
            cfg.paths.output_root = str(tmp_path / "outputs")
            cfg.paths.cache_dir = str(tmp_path / "cache")
            cfg.hydra.runtime.output_dir = str(run_dir or tmp_path / "job")
            cfg.hydra.runtime.cwd = str(ROOT)
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def example_image() -> Path:
    """A bundled RGBA reference image (procedural object rendered by our own code)."""
    candidates = sorted((ROOT / "experiments" / "data").glob("*/*_rgba.png"))
    if not candidates:
        pytest.fail("no bundled example images under experiments/data/*/*_rgba.png")
    return candidates[0]
