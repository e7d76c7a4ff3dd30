"""The `make weights` fetcher and the Hub-cache resolution the priors use (no network needed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from helpers.tiny_models import build_tiny_zero123, single_thread

from cg_lightning import weights
from cg_lightning.errors import MissingWeightsError
from cg_lightning.priors.zero123 import COMPONENTS, Zero123Prior, resolve_zero123_dir

_threads = pytest.fixture(autouse=True)(single_thread)


def fake_hub_cache(hf_home: Path, repo_id: str, source: Path, commit: str = "0" * 40) -> Path:
    """Lay out ``source`` as huggingface_hub's cache would after a download of ``repo_id``."""
    repo_dir = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    shutil.copytree(source, snapshot)
    return snapshot


def test_zero123_loads_from_cached_hub_id_offline(tmp_path, monkeypatch):
    tiny = build_tiny_zero123(tmp_path / "tiny")
    snapshot = fake_hub_cache(tmp_path / "hf", "ashawkey/zero123-xl-diffusers", tiny)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert resolve_zero123_dir("ashawkey/zero123-xl-diffusers") == snapshot
    prior = Zero123Prior()                           # the default id
    prior.setup("cpu")
    prior.set_reference(torch.rand(1, 3, 64, 64), 0.0)
    assert prior.novel_views(torch.zeros(1), torch.zeros(1), torch.zeros(1), steps=2).shape == (1, 3, 256, 256)


def test_incomplete_cached_snapshot_is_missing_not_a_crash(tmp_path, monkeypatch):
    tiny = build_tiny_zero123(tmp_path / "tiny")
    shutil.rmtree(tiny / "vae")
    fake_hub_cache(tmp_path / "hf", "ashawkey/zero123-xl-diffusers", tiny)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(MissingWeightsError, match="zero123-xl"):
        resolve_zero123_dir("ashawkey/zero123-xl-diffusers")


def test_downloads_disabled_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(MissingWeightsError, match="downloads disabled"):
        weights.resolve_hf_snapshot("a/b", ["*"], what="model a/b", allow_download=False)


def test_select_repo_files_prefers_safetensors_and_full_precision():
    files = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.bin",
             "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
             "vae/config.json", "vae/diffusion_pytorch_model.bin", "image_encoder/model.safetensors",
             "image_encoder/config.json", "safety_checker/model.safetensors", "README.md"]
    chosen = weights._select_repo_files(files, weights.ZERO123_PATTERNS)
    assert chosen == sorted(["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                             "vae/config.json", "vae/diffusion_pytorch_model.bin", "image_encoder/model.safetensors",
                             "image_encoder/config.json"])
    clip = weights._select_repo_files(["config.json", "open_clip_pytorch_model.bin", "pytorch_model.bin",
                                       "model.safetensors", "preprocessor_config.json",
                                       "open_clip_model.safetensors"], weights.CLIP_PATTERNS)
    assert clip == ["config.json", "model.safetensors", "preprocessor_config.json"]


def test_step_selection_by_prefix():
    names = [s.name for s in weights.select_steps(None)]
    assert names == ["zero123_xl", "stable_zero123", "realesrgan_anime6b", "realesrgan_x4plus", "u2net", "u2netp",
                     "lpips_vgg", "clip"]
    assert [s.name for s in weights.select_steps(["realesrgan"])] == ["realesrgan_anime6b", "realesrgan_x4plus"]
    assert [s.name for s in weights.select_steps(["zero123_xl,clip"])] == ["zero123_xl", "clip"]
    with pytest.raises(SystemExit):
        weights.select_steps(["nonsense"])


def test_cli_reports_each_step_and_continues(monkeypatch, capsys):
    def ok(cache):
        return "fine"

    def broken(cache):
        raise RuntimeError("no network")

    steps = [weights.Step("first", "a", broken), weights.Step("second", "b", ok)]
    monkeypatch.setattr(weights, "_steps", lambda: steps)
    assert weights.main([]) == 1
    out = capsys.readouterr().out
    assert "[first] FAILED: RuntimeError: no network" in out and "[second] OK: fine" in out
    assert "1/2 steps succeeded" in out
    assert weights.main(["--only", "second"]) == 0
    assert weights.main(["--list"]) == 0


def test_realesrgan_falls_back_to_ncnn_when_github_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "download_url", lambda *a, **k: (_ for _ in ()).throw(OSError("unreachable")))
    made = []

    def fake_convert(name, cache=None, fetch=True):
        made.append(name)
        out = weights.realesrgan_dir(cache) / f"{name}.pth"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"x")
        return out

    monkeypatch.setattr(weights, "convert_realesrgan_from_ncnn", fake_convert)
    path, how = weights.fetch_realesrgan("RealESRGAN_x4plus", tmp_path)
    assert path == tmp_path / "realesrgan" / "RealESRGAN_x4plus.pth" and "ncnn" in how and "unreachable" in how
    assert made == ["RealESRGAN_x4plus"]
    assert weights.fetch_realesrgan("RealESRGAN_x4plus", tmp_path)[1] == "already present"


def test_cache_root_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("CG_CACHE", str(tmp_path / "env"))
    assert weights.cache_root() == tmp_path / "env"
    assert weights.cache_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("CG_CACHE")
    assert weights.cache_root() == Path("~/.cache/cg_lightning").expanduser()


def test_components_tuple_matches_patterns():
    for c in COMPONENTS:
        assert f"{c}/*" in weights.ZERO123_PATTERNS
