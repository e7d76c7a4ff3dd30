"""CLIP image encoder on a tiny random CLIPModel saved and loaded through the real path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.tiny_models import build_tiny_clip, single_thread

from cg_lightning.errors import MissingWeightsError, WrongWeightsError
from cg_lightning.perceptual.clip import CLIPImageEncoder

_threads = pytest.fixture(autouse=True)(single_thread)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", projection_dim=16)


@pytest.fixture(scope="module")
def encoder(clip_dir) -> CLIPImageEncoder:
    enc = CLIPImageEncoder(model=str(clip_dir))
    enc.setup("cpu")
    return enc


def test_embed_shape_and_norm(encoder):
    x = torch.rand(3, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    e = encoder.embed(x)
    assert e.shape == (3, 16) and e.dtype == torch.float32
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert encoder.embed(x[0]).shape == (1, 16)


def test_matches_clipmodel_image_features(encoder, clip_dir):
    """Vision tower + projection only = CLIPModel.get_image_features (what kiui's clip_sim uses)."""
    from transformers import CLIPModel

    x = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    full = CLIPModel.from_pretrained(clip_dir).eval()
    pixels = [(i.permute(1, 2, 0) * 255).round().byte().numpy() for i in x]
    with torch.no_grad():
        ref = full.get_image_features(**encoder.processor(images=pixels, return_tensors="pt"))
    ref = getattr(ref, "pooler_output", ref)
    ref = ref / ref.norm(dim=-1, keepdim=True)
    assert torch.allclose(encoder.embed(x), ref, atol=1e-5)


def test_similarity(encoder):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    same = encoder.similarity(x, x)
    assert torch.allclose(same, torch.ones(2), atol=1e-5)
    other = encoder.similarity(x, 1 - x)
    assert (other < 1 - 1e-4).all()


def test_missing_model_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(MissingWeightsError, match="laion/CLIP-ViT-bigG-14-laion2B-39B-b160k") as info:
        CLIPImageEncoder().setup("cpu")
    assert "make weights" in str(info.value)
    with pytest.raises(MissingWeightsError):
        CLIPImageEncoder(model=str(tmp_path / "no" / "such" / "dir")).setup("cpu")


def test_wrong_folder(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(WrongWeightsError):
        CLIPImageEncoder(model=str(tmp_path)).setup("cpu")
