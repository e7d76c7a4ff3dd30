"""Bad and unusual input images through the whole entry path (``pipeline.run`` / ``launch.py``), not just
``load_image`` (whose corpus is in tests/test_preprocess_image_io.py): each bad one ends as one InputImageError,
marked FAILED in its job directory, before any model is loaded; each unusual one becomes a valid reference."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cg_lightning.errors import InputImageError

ROOT = Path(__file__).resolve().parents[1]
INPUT_ONLY = ["+experiment=smoke", "stages=[]", "preprocess=none", "logger=none"]


def _png_bytes(array: np.ndarray, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", **save)
    return buf.getvalue()


def _object(size: int = 48) -> np.ndarray:
    """An orange disc on a transparent background."""
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((size, size, 4), np.uint8)
    img[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2] = (230, 120, 30, 255)
    return img


def make_bad(kind: str, folder: Path) -> Path:
    if kind == "missing":
        return folder / "nope.png"
    if kind == "directory":
        (folder / "adir.png").mkdir()
        return folder / "adir.png"
    path = folder / f"{kind}.png"
    if kind == "zero_byte":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(_png_bytes(_object(128))[:300])
    elif kind == "not_an_image":
        path.write_text("name,value\na,1\n")
    elif kind == "one_pixel":
        path.write_bytes(_png_bytes(np.full((1, 1, 3), 128, np.uint8)))
    elif kind == "fully_transparent":
        path.write_bytes(_png_bytes(np.zeros((32, 32, 4), np.uint8)))
    return path


BAD = ["missing", "directory", "zero_byte", "truncated", "not_an_image", "one_pixel", "fully_transparent"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_image_is_one_input_error_marked_failed(compose, tmp_path, kind):
    from cg_lightning.pipeline import run

    image = make_bad(kind, tmp_path)
    job = tmp_path / "job"
    with pytest.raises(InputImageError) as info:
        run(compose([*INPUT_ONLY, f"image={image}"], run_dir=job))
    if kind != "fully_transparent":   # that one is judged on the pixels, after loading
        assert str(image) in str(info.value)
    assert (job / "FAILED").read_text().startswith("InputImageError (user error)")
    assert not (job / "input" / "reference_rgba.png").exists()


def _unusual(kind: str, folder: Path) -> Path:
    obj = _object()
    if kind == "grayscale":
        path = folder / "gray.png"
        Image.fromarray(obj[..., 0]).save(path)
    elif kind == "16bit":
        path = folder / "deep.png"
        Image.fromarray(obj[..., 0].astype(np.uint16) * 257).save(path)
    elif kind == "palette":
        path = folder / "palette.png"
        Image.fromarray(obj).convert("P").save(path, transparency=0)
    elif kind == "cmyk_jpeg":
        path = folder / "cmyk.jpg"
        Image.fromarray(obj[..., :3]).convert("CMYK").save(path, format="JPEG")
    elif kind == "animated_gif":
        path = folder / "anim.gif"
        frames = [Image.fromarray(obj[..., :3]), Image.fromarray(255 - obj[..., :3])]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    elif kind == "exif_rotated":
        path = folder / "rotated.jpg"
        wide = np.zeros((30, 50, 3), np.uint8)
        wide[:, :25] = 255
        exif = Image.Exif()
        exif[0x0112] = 6                       # "rotate 90 CW to display"
        Image.fromarray(wide).save(path, format="JPEG", exif=exif.tobytes())
    return path


@pytest.mark.parametrize("kind", ["grayscale", "16bit", "palette", "cmyk_jpeg", "animated_gif", "exif_rotated"])
def test_unusual_image_becomes_a_valid_reference(compose, tmp_path, kind):
    from cg_lightning.pipeline import run

    image = _unusual(kind, tmp_path)
    job = tmp_path / "job"
    run(compose([*INPUT_ONLY, f"image={image}"], run_dir=job))
    assert (job / "DONE").is_file()
    with Image.open(job / "input" / "reference_rgba.png") as ref:
        assert ref.mode == "RGBA"
        rgba = np.asarray(ref)
    assert rgba[..., 3].any()
    if kind == "exif_rotated":
        assert rgba.shape[:2] == (50, 30)      # displayed upright, as a viewer shows it


def test_empty_mask_after_background_removal(compose, tmp_path):
    """An RGB photo with nothing on it: background removal (a tiny u2net stand-in) leaves an empty mask."""
    from helpers.tiny_models import build_tiny_u2net_onnx

    from cg_lightning.pipeline import run

    onnx = build_tiny_u2net_onnx(tmp_path / "u2net")
    image = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(image)
    overrides = ["+experiment=smoke", "stages=[]", "logger=none", f"image={image}", "preprocess=rembg",
                 "preprocess.model=u2netp", f"preprocess.model_path={onnx}"]
    with pytest.raises(InputImageError, match="No object found"):
        run(compose(overrides, run_dir=tmp_path / "job"))


@pytest.mark.slow   # the fast suite covers launch.py with bad images in tests/test_reliability_sweep.py
def test_bad_image_through_launch_is_one_message(tmp_path):
    image = make_bad("not_an_image", tmp_path)
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    res = subprocess.run([sys.executable, "launch.py", *INPUT_ONLY, f"image={image}",
                          f"paths.output_root={tmp_path / 'outputs'}"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr + res.stdout
    assert "Error: " in res.stderr and str(image) in res.stderr[res.stderr.index("Error: "):]
