"""load_image/load_rgba: every bad or unusual input either loads correctly or raises one clear InputImageError."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from cg_lightning.errors import InputImageError
from cg_lightning.preprocess import image_io
from cg_lightning.preprocess.image_io import load_image, load_rgba, save_image


def rgb_pattern(h: int = 40, w: int = 60) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ errors
def test_missing_path(tmp_path):
    with pytest.raises(InputImageError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_directory(tmp_path):
    with pytest.raises(InputImageError, match="directory"):
        load_image(tmp_path)


def test_zero_byte(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(InputImageError, match="empty"):
        load_image(p)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path, fmt):
    buf = io.BytesIO()
    Image.fromarray(rgb_pattern(200, 200)).save(buf, format=fmt)
    p = tmp_path / f"cut.{fmt.lower()}"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(InputImageError, match="corrupt|truncated|not a readable"):
        load_image(p)


def test_garbage_bytes_in_png_body(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(rgb_pattern(64, 64)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[60:200] = os.urandom(140)
    p = tmp_path / "bad.png"
    p.write_bytes(bytes(data))
    with pytest.raises(InputImageError):
        load_image(p)


def test_non_image_with_image_extension(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a JPEG\n" * 20)
    with pytest.raises(InputImageError, match="not a readable image"):
        load_image(p)


def test_tiny_image_refused(tmp_path):
    p = tmp_path / "one.png"
    Image.new("RGB", (1, 1), (255, 0, 0)).save(p)
    with pytest.raises(InputImageError, match="1x1"):
        load_image(p)


def test_fully_transparent_alpha_refused(tmp_path):
    p = tmp_path / "clear.png"
    Image.new("RGBA", (32, 32), (10, 20, 30, 0)).save(p)
    with pytest.raises(InputImageError, match="fully transparent"):
        load_image(p)


def test_pixel_limit(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    Image.fromarray(rgb_pattern(100, 100)).save(p)
    monkeypatch.setattr(image_io, "MAX_INPUT_PIXELS", 5000)
    with pytest.raises(InputImageError, match="MP limit"):
        load_image(p)


# ------------------------------------------------------------------------------------------------ conversions
def test_rgb_png_roundtrip(tmp_path):
    img = rgb_pattern()
    p = save_image(tmp_path / "rgb.png", img)
    out = load_image(p)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, img)


def test_rgba_kept_and_opaque_alpha_dropped(tmp_path):
    rgba = np.dstack([rgb_pattern(), np.full((40, 60), 255, np.uint8)])
    rgba[:10, :10, 3] = 0
    p = save_image(tmp_path / "rgba.png", rgba)
    out = load_image(p)
    assert out.shape == (40, 60, 4)
    np.testing.assert_array_equal(out, rgba)
    rgba[..., 3] = 255
    p2 = save_image(tmp_path / "opaque.png", rgba)
    assert load_image(p2).shape == (40, 60, 3)
    _, has_alpha = load_rgba(p2)
    assert has_alpha is False


def test_grayscale_and_la(tmp_path):
    gray = rgb_pattern()[..., 0]
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (40, 60, 3) and (out[..., 0] == gray).all() and (out[..., 2] == gray).all()
    la = np.dstack([gray, np.where(gray > 100, 255, 0).astype(np.uint8)])
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    out = load_image(tmp_path / "la.png")
    assert out.shape == (40, 60, 4) and (out[..., 3] == la[..., 1]).all()


def test_palette_with_and_without_transparency(tmp_path):
    img = Image.fromarray(rgb_pattern()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    img.save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").shape == (40, 60, 3)
    img.info["transparency"] = 0
    img.save(tmp_path / "pt.png", transparency=0)
    out = load_image(tmp_path / "pt.png")
    assert out.shape == (40, 60, 4)
    idx = np.asarray(img)
    assert ((out[..., 3] == 0) == (idx == 0)).all()


def test_16bit_png(tmp_path):
    values = (np.arange(40 * 60).reshape(40, 60) * 27).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    out = load_image(tmp_path / "g16.png")
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(out[..., 0], np.round(values / 257.0), atol=1)


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (32, 24), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)   # pure red
    out = load_image(tmp_path / "c.jpg")
    assert out.shape == (24, 32, 3)
    r, g, b = out.reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60


def test_exif_rotation_applied(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = (255, 0, 0)                      # left half red
    exif = Image.Exif()
    exif[0x0112] = 6                               # "rotate 90 CW to display"
    Image.fromarray(img).save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "r.jpg")
    assert out.shape == (40, 20, 3)                # displayed upright: portrait
    assert out[:15, :, 0].mean() > 200 and out[-15:, :, 0].mean() < 60   # red ends up on top


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_first_frame(tmp_path, fmt):
    frames = [Image.new("RGB", (32, 32), c) for c in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    p = tmp_path / f"anim.{fmt.lower()}"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0, lossless=True)
    out = load_image(p)
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 40


def test_huge_image_downscaled(tmp_path, monkeypatch):
    monkeypatch.setattr(image_io, "MAX_SIDE", 64)
    Image.fromarray(rgb_pattern(100, 300)).save(tmp_path / "wide.png")
    out = load_image(tmp_path / "wide.png")
    assert out.shape == (21, 64, 3)


def test_save_image_is_atomic_and_formats(tmp_path):
    p = save_image(tmp_path / "sub" / "x.png", rgb_pattern())
    assert p.exists() and not list(p.parent.glob(".x.png*"))
    with pytest.raises(ValueError):
        save_image(tmp_path / "f.png", rgb_pattern().astype(np.float32))
