"""Each prior / superres / preprocess config instantiates on its own, and prior=tiny runs the real code path."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from helpers.tiny_models import single_thread
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cg_lightning.preprocess.background import BackgroundRemover, NoBackgroundRemoval
from cg_lightning.preprocess.superres import NoUpscale, RealESRGANUpscaler
from cg_lightning.priors.base import Prior
from cg_lightning.priors.tiny import TinyZero123Prior, ensure_tiny_zero123
from cg_lightning.priors.zero123 import Zero123Prior

CONF = Path(__file__).resolve().parents[1] / "conf"
_threads = pytest.fixture(autouse=True)(single_thread)


def load(group: str, name: str):
    return instantiate(OmegaConf.load(CONF / group / f"{name}.yaml"))


@pytest.mark.parametrize(("name", "model", "stable"), [
    ("zero123_xl", "ashawkey/zero123-xl-diffusers", False),
    ("stable_zero123", "ashawkey/stable-zero123-diffusers", True),
])
def test_zero123_configs(name, model, stable):
    prior = load("prior", name)
    assert type(prior) is Zero123Prior and isinstance(prior, Prior)
    assert prior.model == model and prior.stable is stable
    assert prior.guidance_scale == 5.0 and prior.t_range == (0.02, 0.98) and prior.c is None   # lazy


@pytest.mark.parametrize(("name", "cls", "model"), [
    ("realesrgan_anime6b", RealESRGANUpscaler, "RealESRGAN_x4plus_anime_6B"),
    ("realesrgan_x4plus", RealESRGANUpscaler, "RealESRGAN_x4plus"),
    ("none", NoUpscale, None),
])
def test_superres_configs(name, cls, model):
    sr = load("superres", name)
    assert type(sr) is cls
    if model:
        assert sr.model_name == model and sr.net is None and sr.tile_pad == 10


def test_preprocess_configs():
    rem = load("preprocess", "rembg")
    assert type(rem) is BackgroundRemover
    assert (rem.model, rem.size, rem.border_ratio, rem.recenter) == ("u2net", 256, 0.2, True)
    assert type(load("preprocess", "none")) is NoBackgroundRemoval


def test_no_config_pins_a_device():
    for path in CONF.glob("*/*.yaml"):
        if path.parent.name in ("prior", "superres", "preprocess"):
            assert "device" not in OmegaConf.load(path), path


def test_tiny_prior_from_config_builds_once_and_runs(tmp_path):
    cfg = OmegaConf.load(CONF / "prior" / "tiny.yaml")
    cfg.cache_dir = str(tmp_path)
    start = time.perf_counter()
    prior = instantiate(cfg)
    assert isinstance(prior, TinyZero123Prior) and isinstance(prior, Zero123Prior)
    prior.setup(torch.device("cpu"))
    assert time.perf_counter() - start < 20         # < 2 s on a quiet machine; generous for a shared CI box
    folder = ensure_tiny_zero123(tmp_path, 0)
    assert prior.model == str(folder)
    stamp = (folder / "unet" / "config.json").stat().st_mtime_ns
    assert ensure_tiny_zero123(tmp_path, 0) == folder
    assert (folder / "unet" / "config.json").stat().st_mtime_ns == stamp      # cached, not rebuilt
    prior.set_reference(torch.rand(1, 3, 64, 64), 0.0)
    images = torch.rand(1, 3, 32, 32, requires_grad=True)
    prior.sds(images, torch.zeros(1), torch.tensor([45.0]), torch.zeros(1), 0.2).loss.backward()
    assert images.grad.abs().sum() > 0


def test_tiny_model_is_deterministic_per_seed(tmp_path):
    from safetensors.torch import load_file

    a = load_file(ensure_tiny_zero123(tmp_path / "a", 0) / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(ensure_tiny_zero123(tmp_path / "b", 0) / "unet" / "diffusion_pytorch_model.safetensors")
    c = load_file(ensure_tiny_zero123(tmp_path / "c", 1) / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
