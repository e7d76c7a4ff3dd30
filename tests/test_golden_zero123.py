"""Golden: Zero123 SDS and refine against DG ``guidance/zero123_utils.py`` with a tiny random model.

Fixtures: tests/golden/zero123_sds.npz, zero123_refine.npz, made by the official code with the tiny model that
``cg_lightning.priors.tiny.save_tiny_zero123(folder, seed=0)`` writes (rebuilt here, ~1 s, instead of shipping it).
A seeded reimplementation cannot reproduce the official random draws (the VAE returns channels-last latents on a
CPU and ``randn_like`` of those differs from ``randn`` of the logical shape), so every random tensor is injected in
logical NCHW order: the VAE posterior draws through diffusers' ``randn_tensor`` and the diffusion noise through
``Zero123Prior._randn``.

Tolerances are about twice the float32 differences measured for this reimplementation (tests/golden/README.md):
CLIP embedding and reference latent exact; camera embedding 6.0e-8; UNet context 1.2e-7; noisy latents 2.4e-7;
guided eps 1.3e-5 (values ~9); SDS loss 1.8e-7 relative; d loss / d renders 3.7e-5 (values ~21); refine start
latents 1.2e-7, final latents 3.6e-6, image 3.2e-6, float64 channel sums 8.4e-3 on ~3.4e4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

GOLDEN = Path(__file__).parent / "golden"
ENCODINGS = ("xl", "stable")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    from cg_lightning.priors.tiny import save_tiny_zero123

    return save_tiny_zero123(tmp_path_factory.mktemp("tiny_zero123") / "tiny_zero123", seed=0)


def t(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


class Injector:
    """Replaces the prior's random draws by the fixture's arrays, in order, checking each shape."""

    def __init__(self, monkeypatch, prior) -> None:
        import diffusers.models.autoencoders.vae as vae_module

        self.vae: list[torch.Tensor] = []
        self.noise: list[torch.Tensor] = []

        def vae_randn(shape, generator=None, device=None, dtype=None, layout=None):
            eps = self.vae.pop(0)
            assert tuple(eps.shape) == tuple(shape)
            return eps.to(device=device, dtype=dtype)

        def noise_randn(shape):
            eps = self.noise.pop(0)
            assert tuple(eps.shape) == tuple(shape)
            return eps.clone()

        monkeypatch.setattr(vae_module, "randn_tensor", vae_randn)
        monkeypatch.setattr(prior, "_randn", noise_randn)


class Recorder:
    """Records the guided-eps calls (UNet inputs and guided output) and the latents handed to the decoder."""

    def __init__(self, monkeypatch, prior) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.decoded: list[torch.Tensor] = []
        guided, decode = prior._guided_eps, prior._decode

        def guided_eps(noisy, ts, context, image_latents):
            eps = guided(noisy, ts, context, image_latents)
            self.calls.append((noisy.detach().clone(), ts.clone(), context.detach().clone(), eps.detach().clone()))
            return eps

        def decode_(latents):
            self.decoded.append(latents.clone())
            return decode(latents)

        monkeypatch.setattr(prior, "_guided_eps", guided_eps)
        monkeypatch.setattr(prior, "_decode", decode_)


def make_prior(monkeypatch, folder: Path, fx, e: str):
    from cg_lightning.priors.zero123 import Zero123Prior

    prior = Zero123Prior(model=str(folder), pose_encoding=e, guidance_scale=float(fx["guidance_scale"]), dtype="fp32")
    prior.setup("cpu")
    inject = Injector(monkeypatch, prior)
    inject.vae.append(t(fx["eps_vae_ref"]))
    prior.set_reference(t(fx["ref_image"]), float(fx[f"{e}_default_elevation"]))
    assert not inject.vae
    views = (t(fx["d_elev"]).float(), t(fx["d_azim"]).float(), t(fx[f"{e}_d_radius"]).float())
    return prior, inject, Recorder(monkeypatch, prior), views


def close(a: torch.Tensor, b: np.ndarray, atol: float) -> None:
    np.testing.assert_allclose(a.detach().double().numpy(), b.astype(np.float64), atol=atol, rtol=0)


@pytest.mark.parametrize("e", ENCODINGS)
def test_sds(monkeypatch, tiny_folder, e):
    fx = dict(np.load(GOLDEN / "zero123_sds.npz"))
    prior, inject, rec, views = make_prior(monkeypatch, tiny_folder, fx, e)
    np.testing.assert_array_equal(prior._ref_token[:, 0].numpy(), fx[f"{e}_clip_embedding"])
    np.testing.assert_array_equal(prior._ref_latent.numpy(), fx[f"{e}_ref_latent_unscaled"])
    close(prior.camera_embedding(*views)[:, None], fx[f"{e}_camera_embedding"], 1.2e-7)
    context, _ = prior._conditioning(*views)
    close(context[:2], fx[f"{e}_cross_attn_token"], 2.5e-7)
    for i in range(int(fx[f"{e}_num_ratios"])):
        p = f"{e}_r{i}_"
        renders = t(fx["renders"]).clone().requires_grad_(True)
        inject.vae.append(t(fx["eps_vae"]))
        inject.noise.append(t(fx["noise"]))
        out = prior.sds(renders, *views, step_ratio=float(fx[p + "step_ratio"]))
        assert out.timestep == int(fx[p + "t"])
        noisy, ts, ctx, eps = rec.calls[-1]
        np.testing.assert_array_equal(torch.cat([ts, ts]).numpy(), fx[p + "t_in"])
        close(noisy, fx[p + "latents_noisy"], 5e-7)
        close(eps, fx[p + "eps_cfg"], 2.6e-5)
        if i == 0:
            close(ctx, fx[p + "unet_context"], 2.5e-7)
        assert float(out.loss.detach()) == pytest.approx(float(fx[p + "loss"]), rel=4e-7)
        out.loss.backward()
        close(renders.grad, fx[p + "grad_renders"], 7.5e-5)
    assert not inject.vae and not inject.noise


@pytest.mark.parametrize("e", ENCODINGS)
def test_refine(monkeypatch, tiny_folder, e):
    fx = dict(np.load(GOLDEN / "zero123_refine.npz"))
    prior, inject, rec, views = make_prior(monkeypatch, tiny_folder, fx, e)
    steps = int(fx["ddim_steps"])
    for j in (0, 1):
        p = f"{e}_s{j}_"
        rec.calls.clear()
        inject.vae.append(t(fx["eps_vae"]))
        inject.noise.append(t(fx["noise"]))
        image = prior.refine(t(fx["renders"]), *views, strength=float(fx[p + "strength"]), steps=steps)
        assert tuple(image.shape) == tuple(fx[p + "image_shape"])
        np.testing.assert_array_equal([int(c[1][0]) for c in rec.calls], fx[p + "timesteps"])
        close(rec.calls[0][0], fx[p + "x_t0"], 2.5e-7)
        close(rec.calls[0][3], fx[p + "eps_cfg_first"], 2.6e-5)
        close(rec.decoded[-1], fx[p + "latents_final"], 7.2e-6)
        close(image[..., ::4, ::4], fx[p + "image_sub4"], 6.4e-6)
        np.testing.assert_allclose(image.double().sum((-1, -2)).numpy(), fx[p + "image_channel_sum_f64"],
                                   rtol=5e-7, atol=0)
    assert not inject.vae and not inject.noise
