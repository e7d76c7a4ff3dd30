"""LPIPS wrapper: input convention, per-layer features, gradients, and the missing-backbone error."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.tiny_models import single_thread

from cg_lightning.errors import ConfigError, MissingWeightsError
from cg_lightning.perceptual.lpips import LPIPS

_threads = pytest.fixture(autouse=True)(single_thread)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    quirk = LPIPS(net="vgg", normalize=False, pretrained=False)
    proper = copy.copy(quirk)          # shares the (random) network; differs only in the input convention
    proper.normalize = True
    return quirk, proper


def test_distance_shape_identity_and_symmetry(nets, images):
    quirk, _ = nets
    x, y = images
    d = quirk(x, y)
    assert d.shape == (2,) and (d > 0).all()
    assert torch.allclose(quirk(x, x), torch.zeros(2), atol=1e-6)
    assert torch.allclose(d, quirk(y, x), atol=1e-6)
    assert quirk(x[0], y[0]).shape == (1,)


def test_normalize_flag_is_the_only_difference(nets, images):
    quirk, proper = nets
    x, y = images
    assert torch.allclose(proper(x, y), quirk(2 * x - 1, 2 * y - 1), atol=1e-6)
    assert not torch.allclose(proper(x, y), quirk(x, y), atol=1e-4)


def test_matches_lpips_package_call(nets, images):
    quirk, proper = nets
    x, y = images
    assert torch.allclose(quirk(x, y), quirk.model(x, y).flatten())                 # CG: raw [0,1] in
    assert torch.allclose(proper(x, y), quirk.model(x, y, normalize=True).flatten())


def test_features_are_unit_normalised_per_layer(nets, images):
    quirk, _ = nets
    feats = quirk.features(images[0])
    assert len(feats) == 5                                     # VGG relu1_2 ... relu5_3
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512, 512]
    for f in feats:
        assert torch.allclose(f.norm(dim=1), torch.ones_like(f[:, 0]), atol=1e-3)


def test_gradient_reaches_input(nets, images):
    quirk, _ = nets
    x = images[0].clone().requires_grad_(True)
    quirk(x, images[1]).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in quirk.parameters())


def test_missing_backbone_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MissingWeightsError, match="vgg16-397923af.pth") as info:
        LPIPS(net="vgg", pretrained=True, allow_download=False)
    assert str(tmp_path / "torch") in str(info.value) and "make weights" in str(info.value)


def test_bad_config():
    with pytest.raises(ConfigError):
        LPIPS(net="resnet", pretrained=False)
