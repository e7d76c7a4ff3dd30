"""Turn the ``device`` config key into a torch device."""

from __future__ import annotations

import torch

from cg_lightning.errors import ConfigError


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> first CUDA GPU if available, else CPU. Asking for CUDA without one is a config error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"device={spec!r} is not a valid torch device (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={spec!r} but CUDA is not available on this machine; use device=auto or device=cpu")
    return device


def lightning_accelerator(device: torch.device) -> dict:
    """Trainer arguments that put a stage on ``device`` (one device per job; we never use DDP)."""
    if device.type == "cuda":
        return {"accelerator": "gpu", "devices": [device.index or 0]}
    return {"accelerator": "cpu", "devices": 1}
