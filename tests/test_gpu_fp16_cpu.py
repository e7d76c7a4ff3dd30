"""The prior's fp16 path (what CUDA runs) exercised on a CPU with the tiny Zero123: dtypes end to end and
agreement with fp32.

The modules are frozen (``requires_grad_(False)`` at load), which is also what lets CPU fp16 kernels run. The
renderer hands fp32 images in; SDS must return an fp32 loss whose gradient reaches the fp32 images, with the
loss accumulated in fp32 (an fp16 sum of ~8k squared residuals would be off by ~1e-3 relative and overflow for
larger images); ``refine`` / ``novel_views`` return fp32 images in [0, 1].
"""

from __future__ import annotations

import pytest
import torch

from cg_lightning.priors.zero123 import Zero123Prior
from tests.helpers.tiny_models import build_tiny_zero123

VIEWS = (torch.tensor([10.0, -20.0]), torch.tensor([30.0, 90.0]), torch.zeros(2))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = build_tiny_zero123(tmp_path_factory.mktemp("zero123") / "tiny", seed=0)
    reference = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    out = {}
    for dtype in ("fp32", "fp16"):
        prior = Zero123Prior(model=str(folder), seed=7, dtype=dtype)
        prior.setup("cpu")
        prior.set_reference(reference, 0.0)
        images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2), requires_grad=True)
        sds = prior.sds(images, *VIEWS, step_ratio=0.3)
        sds.loss.backward()
        out[dtype] = {
            "prior": prior,
            "loss": sds.loss.detach(),
            "loss_dtype": sds.loss.dtype,
            "grad": images.grad,
            "refine": prior.refine(images.detach(), *VIEWS, strength=0.8, steps=10),  # 2 DDIM steps
            "novel": prior.novel_views(*VIEWS, steps=1),
        }
    return out


def test_fp16_modules_are_frozen_and_half(runs):
    c = runs["fp16"]["prior"].c
    for module in (c.unet, c.vae, c.image_encoder, c.camera_projection):
        assert module.dtype == torch.float16
        assert not any(p.requires_grad for p in module.parameters())
    assert runs["fp16"]["prior"]._ref_latent.dtype == torch.float16


def test_fp16_sds_returns_fp32_loss_and_gradients(runs):
    r = runs["fp16"]
    assert r["loss_dtype"] == torch.float32
    assert r["grad"].dtype == torch.float32 and torch.isfinite(r["grad"]).all() and r["grad"].abs().sum() > 0
    assert torch.isfinite(r["loss"])


def test_fp16_sds_agrees_with_fp32(runs):
    a, b = runs["fp32"], runs["fp16"]
    # measured on this CPU: loss 3e-5 relative, image gradient 5e-3 relative (fp16 VAE backward)
    assert ((b["loss"] - a["loss"]).abs() / a["loss"]).item() < 1e-3
    assert ((b["grad"] - a["grad"]).norm() / a["grad"].norm()).item() < 0.02


def test_fp16_refine_and_novel_views_agree_with_fp32(runs):
    a, b = runs["fp32"], runs["fp16"]
    for key in ("refine", "novel"):
        assert b[key].dtype == torch.float32 and torch.isfinite(b[key]).all()
        assert 0.0 <= b[key].min() and b[key].max() <= 1.0
        # measured: 9e-3 (refine), 4e-3 (novel views) max abs on [0, 1] images
        assert (b[key] - a[key]).abs().max().item() < 0.03
        assert (b[key] - a[key]).abs().mean().item() < 2e-3
