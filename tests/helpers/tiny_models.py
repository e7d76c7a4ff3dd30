"""Tiny random stand-ins for the pretrained models, saved in the real on-disk formats.

Each builder writes files that the production loaders read unchanged, so tests exercise the real loading code:

* :func:`build_tiny_zero123` - a Zero123 diffusers folder (unet/ vae/ image_encoder/ feature_extractor/
  scheduler/ clip_camera_projection/ + model_index.json), loadable with ``Zero123Prior(model=str(folder))``.
* :func:`build_tiny_esrgan` - an official-layout Real-ESRGAN ``.pth`` (``{"params_ema": ...}``) for
  ``RealESRGANUpscaler(weights=...)``.
* :func:`build_tiny_u2net_onnx` - an ONNX model with u2net's input/output convention written into a
  ``U2NET_HOME``-style folder. It is not random: it segments "everything that differs from the top-left pixel's
  colour", so background-removal tests on plain-background images get a meaningful mask.
* :func:`build_tiny_clip` - a full ``CLIPModel`` folder (text + vision, like the LAION repos) for
  ``CLIPImageEncoder(model=str(folder))``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def build_tiny_zero123(folder: str | Path, seed: int = 0) -> Path:
    """Tiny random Zero123 in the public HF folder layout (same builder ``prior=tiny`` uses)."""
    from cg_lightning.priors.tiny import save_tiny_zero123

    return save_tiny_zero123(folder, seed=seed)


def build_tiny_esrgan(path: str | Path, num_blocks: int = 1, num_feat: int = 8, seed: int = 0) -> Path:
    """Random Real-ESRGAN RRDBNet x4 (growth 32, as spandrel assumes) saved like the official release."""
    from cg_lightning.preprocess.ncnn_convert import rrdbnet_key_names

    gen = torch.Generator().manual_seed(seed)
    gc = 32
    shapes = {"conv_first": (num_feat, 3)}
    for b in range(num_blocks):
        for r in (1, 2, 3):
            for c in range(1, 6):
                in_ch = num_feat + (c - 1) * gc
                shapes[f"body.{b}.rdb{r}.conv{c}"] = (num_feat if c == 5 else gc, in_ch)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        shapes[name] = (num_feat, num_feat)
    shapes["conv_last"] = (3, num_feat)
    state = {}
    for name in rrdbnet_key_names(num_blocks):
        out_ch, in_ch = shapes[name]
        state[f"{name}.weight"] = torch.randn(out_ch, in_ch, 3, 3, generator=gen) * (0.5 / (in_ch * 9) ** 0.5)
        state[f"{name}.bias"] = torch.zeros(out_ch)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": state}, path)
    return path


class _ColourDistanceSegmenter(nn.Module):
    """u2net-shaped ONNX stand-in: (1,3,320,320) normalised RGB -> (1,1,320,320) foreground score."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        corner = x[:, :, :1, :1]
        score = (x - corner).abs().sum(dim=1, keepdim=True)
        return torch.clamp(score * 4.0, 0.0, 1.0)


def build_tiny_u2net_onnx(u2net_home: str | Path, name: str = "u2netp") -> Path:
    """Export the colour-distance segmenter as ``<u2net_home>/<name>.onnx`` (legacy flat rembg layout)."""
    folder = Path(u2net_home)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.onnx"
    torch.onnx.export(_ColourDistanceSegmenter().eval(), (torch.zeros(1, 3, 320, 320),), str(path),
                      input_names=["input.1"], output_names=["mask"], opset_version=17, dynamo=False)
    return path


def build_tiny_clip(folder: str | Path, projection_dim: int = 16, seed: int = 0) -> Path:
    """Random full ``CLIPModel`` + ``CLIPImageProcessor`` saved like a Hub CLIP repo."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = CLIPConfig(
            text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                         "num_attention_heads": 2, "vocab_size": 99, "max_position_embeddings": 16,
                         "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
            vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                           "num_attention_heads": 2, "image_size": 224, "patch_size": 32},
            projection_dim=projection_dim)
        model = CLIPModel(config)
    model.save_pretrained(folder)
    CLIPImageProcessor().save_pretrained(folder)
    return folder


def single_thread():
    """Generator for an autouse fixture: run torch on one thread (the shared 2-core CI box thrashes with two).

    Use as ``_threads = pytest.fixture(autouse=True)(single_thread)`` in a test module.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
