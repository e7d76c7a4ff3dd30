"""Zero123 prior on a tiny random model saved in the HF folder layout and loaded through the real code path."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers.tiny_models import build_tiny_zero123, single_thread

from cg_lightning.errors import MissingWeightsError, WrongWeightsError
from cg_lightning.priors.base import Prior, sds_timestep
from cg_lightning.priors.zero123 import COMPONENTS, Zero123Prior

_threads = pytest.fixture(autouse=True)(single_thread)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_zero123(tmp_path_factory.mktemp("zero123") / "tiny-zero123", seed=0)


def views(n: int = 2):
    return (torch.tensor([10.0, -20.0][:n]), torch.tensor([30.0, 90.0][:n]), torch.zeros(n))


def reference() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(1, 3, 96, 96, generator=g)


@pytest.fixture
def prior(tiny_dir) -> Zero123Prior:
    p = Zero123Prior(model=str(tiny_dir), seed=7)
    p.setup(torch.device("cpu"))
    p.set_reference(reference(), elevation_deg=0.0)
    return p


def test_saved_layout_matches_hf_repo(tiny_dir):
    for sub in COMPONENTS:
        assert (tiny_dir / sub).is_dir(), sub
    assert (tiny_dir / "clip_camera_projection" / "config.json").is_file()
    assert (tiny_dir / "scheduler" / "scheduler_config.json").is_file()
    assert (tiny_dir / "model_index.json").is_file()


def test_loads_through_real_path_and_is_a_prior(prior):
    assert isinstance(prior, Prior)
    c = prior.c
    assert c.unet.config.in_channels == 8
    assert c.camera_projection.proj.in_features == c.image_encoder.config.projection_dim + 4
    assert prior.dtype == torch.float32                      # fp32 on CPU
    assert not any(p.requires_grad for p in c.unet.parameters())
    assert prior._ref_latent.shape == (1, 4, 32, 32) and prior._ref_token.shape[:2] == (1, 1)


def test_sds_gradient_reaches_input_image(prior):
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    out = prior.sds(images, *views(), step_ratio=0.5)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.timestep == 500
    out.loss.backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0
    assert all(p.grad is None for p in prior.c.vae.parameters())


def test_sds_loss_is_half_squared_norm_of_weighted_residual(prior, monkeypatch):
    """With eps_hat forced to a constant, grad = w(t)(eps_hat - eps) is known given the noise draw."""
    from types import SimpleNamespace

    class ConstUNet(torch.nn.Module):
        dtype = torch.float32

        def forward(self, x, t, encoder_hidden_states):
            n = x.shape[0] // 2
            sample = torch.cat([torch.full_like(x[:n, :4], 1.0), torch.full_like(x[:n, :4], 0.5)])
            return SimpleNamespace(sample=sample)

    monkeypatch.setattr(prior.c, "unet", ConstUNet())
    noises = []
    real_randn = prior._randn
    monkeypatch.setattr(prior, "_randn", lambda shape: noises.append(real_randn(shape)) or noises[-1])
    images = torch.rand(1, 3, 64, 64, requires_grad=True)
    out = prior.sds(images, *views(1), step_ratio=0.25)
    t = out.timestep
    assert t == 750
    eps_hat = 0.5 + 5.0 * (1.0 - 0.5)                       # CFG: uncond + 5 (cond - uncond)
    w = 1.0 - prior.c.scheduler.alphas_cumprod[t]
    grad = w * (eps_hat - noises[-1])
    assert torch.allclose(out.loss, 0.5 * (grad ** 2).sum(), rtol=1e-4)


def test_unconditional_branch_is_all_zeros(prior):
    ctx, img = prior._conditioning(*views())
    assert ctx.shape[0] == 4 and img.shape[0] == 4
    assert torch.count_nonzero(ctx[2:]) == 0 and torch.count_nonzero(img[2:]) == 0
    assert torch.count_nonzero(ctx[:2]) > 0 and torch.count_nonzero(img[:2]) > 0


def test_refine_and_novel_views_shapes_and_range(prior):
    images = torch.rand(2, 3, 80, 80)
    refined = prior.refine(images, *views(), strength=0.8, steps=10)
    assert refined.shape == (2, 3, 256, 256)
    assert refined.min() >= 0 and refined.max() <= 1
    novel = prior.novel_views(*views(1), steps=3)
    assert novel.shape == (1, 3, 256, 256)


def test_refine_start_index_follows_strength(prior):
    calls = []
    handle = prior.c.unet.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        prior.refine(torch.rand(1, 3, 64, 64), *views(1), strength=0.8, steps=50)
        assert len(calls) == 50 - int(50 * 0.8)               # 10 DDIM steps from t = 181
        calls.clear()
        prior.novel_views(*views(1), steps=4)
        assert len(calls) == 4
    finally:
        handle.remove()
    assert int(prior.c.scheduler.timesteps[0]) == 751         # leading spacing + offset 1 for 4 steps


def test_deterministic_under_seed(tiny_dir):
    def run(seed):
        p = Zero123Prior(model=str(tiny_dir), seed=seed)
        p.setup("cpu")
        p.set_reference(reference(), 0.0)
        images = torch.linspace(0, 1, 3 * 64 * 64).reshape(1, 3, 64, 64)
        loss = p.sds(images, *views(1), step_ratio=None).loss
        return loss.item(), p.refine(images, *views(1), strength=0.9, steps=10)

    (l1, r1), (l2, r2), (l3, r3) = run(3), run(3), run(4)
    assert l1 == l2 and torch.equal(r1, r2)
    assert l1 != l3 and not torch.equal(r1, r3)


def test_timestep_schedule():
    assert sds_timestep(0.0) == 980 and sds_timestep(1.0) == 20
    assert sds_timestep(0.5) == 500 and sds_timestep(0.3) == 700 and sds_timestep(0.999) == 20
    gen = torch.Generator().manual_seed(0)
    draws = [sds_timestep(None, generator=gen) for _ in range(400)]
    assert min(draws) >= 20 and max(draws) <= 980 and len(set(draws)) > 100


def test_anneal_disabled_draws_random_timesteps(tiny_dir):
    p = Zero123Prior(model=str(tiny_dir), anneal_timestep=False, seed=0)
    p.setup("cpu")
    p.set_reference(reference(), 0.0)
    ts = {p.sds(torch.rand(1, 3, 32, 32), *views(1), step_ratio=0.5).timestep for _ in range(4)}
    assert len(ts) > 1 and all(20 <= t <= 980 for t in ts)


def test_pose_encodings(prior):
    emb = prior.camera_embedding(torch.tensor([30.0]), torch.tensor([90.0]), torch.tensor([0.5]))
    assert torch.allclose(emb, torch.tensor([[math.radians(30), 1.0, 0.0, 0.5]]), atol=1e-6)
    prior.pose_encoding = "stable"
    prior._ref_elevation = -30.0
    emb = prior.camera_embedding(torch.tensor([30.0]), torch.tensor([180.0]), torch.tensor([0.5]))
    assert torch.allclose(emb, torch.tensor([[math.radians(30), 0.0, -1.0, math.radians(60)]]), atol=1e-6)
    assert Zero123Prior(model="ashawkey/stable-zero123-diffusers").stable
    assert not Zero123Prior().stable


def test_missing_weights_offline_names_id_hf_home_and_make_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    prior = Zero123Prior(model="ashawkey/zero123-xl-diffusers")
    with pytest.raises(MissingWeightsError) as info:
        prior.setup("cpu")
    msg = str(info.value)
    assert "ashawkey/zero123-xl-diffusers" in msg and str(tmp_path / "hf") in msg and "HF_HOME" in msg
    assert "make weights" in msg


def test_missing_local_folder_and_wrong_layout(tmp_path):
    with pytest.raises(MissingWeightsError):
        Zero123Prior(model=str(tmp_path / "nope" / "model")).setup("cpu")
    (tmp_path / "broken" / "unet").mkdir(parents=True)
    with pytest.raises(WrongWeightsError, match="vae"):
        Zero123Prior(model=str(tmp_path / "broken")).setup("cpu")


def test_wrong_input_channels_rejected(tmp_path, tiny_dir):
    import json
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    cfg = json.loads((bad / "unet" / "config.json").read_text())
    cfg["in_channels"] = 4
    (bad / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WrongWeightsError):
        Zero123Prior(model=str(bad)).setup("cpu")


@pytest.mark.gpu
def test_fp16_on_cuda(tiny_dir):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    p = Zero123Prior(model=str(tiny_dir), seed=0)
    p.setup(torch.device("cuda"))
    assert p.dtype == torch.float16 and p.c.unet.dtype == torch.float16
    p.set_reference(reference().cuda(), 0.0)
    images = torch.rand(2, 3, 64, 64, device="cuda", requires_grad=True)
    out = p.sds(images, *views(), step_ratio=0.3)
    out.loss.backward()
    assert out.loss.dtype == torch.float32 and torch.isfinite(images.grad).all()
    assert p.refine(images.detach(), *views(), strength=0.8, steps=10).shape == (2, 3, 256, 256)
