"""LPIPS-VGG and LPIPS-Alex are built without the backbone's unused classifier and still load the same weights."""

from __future__ import annotations

import torch

from cg_lightning.perceptual.lpips import LPIPS


def test_pretrained_backbone_equals_torchvisions_features(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # torch.hub.get_dir() -> tmp_path/hub
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16()  # stands in for the ImageNet checkpoint (same layout)
    ckpt = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    ckpt.parent.mkdir(parents=True)
    torch.save(vgg.state_dict(), ckpt)
    model = LPIPS(net="vgg", pretrained=True, allow_download=False)
    ours = [m for m in model.model.net.modules() if isinstance(m, torch.nn.Conv2d)]
    theirs = [m for m in vgg.features if isinstance(m, torch.nn.Conv2d)]
    assert len(ours) == len(theirs) == 13
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert sum(p.numel() for p in model.parameters()) < 15_000_000  # no 120M-parameter classifier


def test_random_backbone_is_a_working_vgg():
    model = LPIPS(net="vgg", pretrained=False)
    x = torch.rand(2, 3, 64, 64)
    d = model(x, x.flip(0))
    assert d.shape == (2,) and torch.isfinite(d).all() and (d > 0).all()
    assert model(x, x).abs().max() < 1e-6


def test_alexnet_backbone_is_torchvisions_features_without_the_classifier(tmp_path, monkeypatch):
    """LPIPS-Alex (the smoke runs' scorer) is built the same way: torchvision's AlexNet features and weights."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    alex = torchvision.models.alexnet()
    ckpt = tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    ckpt.parent.mkdir(parents=True)
    torch.save(alex.state_dict(), ckpt)
    model = LPIPS(net="alex", pretrained=True, allow_download=False)
    ours = [m for m in model.model.net.modules() if isinstance(m, torch.nn.Conv2d)]
    theirs = [m for m in alex.features if isinstance(m, torch.nn.Conv2d)]
    assert [tuple(m.weight.shape) for m in ours] == [tuple(m.weight.shape) for m in theirs] and len(ours) == 5
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert sum(p.numel() for p in model.parameters()) < 3_000_000   # no 58M-parameter classifier
    random = LPIPS(net="alex", pretrained=False, normalize=True)
    x = torch.rand(2, 3, 64, 64)
    assert torch.isfinite(random(x, x.flip(0))).all() and random(x, x).abs().max() < 1e-6
