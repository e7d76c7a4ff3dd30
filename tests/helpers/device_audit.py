"""Find tensors that project code creates on the *default* device instead of the device of its data.

On a CPU every tensor lands on the CPU, so a ``torch.zeros(n)`` that should have been ``torch.zeros(n,
device=x.device)`` only breaks on a GPU ("expected all tensors to be on the same device"). :class:`DeviceAudit`
is a ``TorchFunctionMode`` that records every factory call (``zeros``, ``arange``, ``tensor``, ...) made without
an explicit ``device`` from a frame inside ``cg_lightning/``, with the file and line. Calls that pass a device
(``device="cpu"`` for deliberately host-side tensors included) are fine, as are draws from an explicit
``generator`` (its device decides) and the functions in :data:`HOST_SIDE`; ``*_like`` and ``Tensor.new_*``
inherit their device and are not factories here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

PACKAGE = str(Path(__file__).resolve().parents[2] / "cg_lightning")

FACTORIES = {
    torch.zeros,
    torch.ones,
    torch.empty,
    torch.full,
    torch.arange,
    torch.linspace,
    torch.logspace,
    torch.eye,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.randperm,
    torch.tensor,
    torch.as_tensor,
    torch.scalar_tensor,
    torch.normal,
    torch.tril_indices,
    torch.triu_indices,
}

# Host-side by design: orbit poses are computed in float64 on the CPU and moved with ``Camera.to(device)``.
HOST_SIDE = {("cg_lightning/cameras.py", "orbit_camera"), ("cg_lightning/cameras.py", "camera_position")}


def _project_caller(allowed: set[tuple[str, str]]) -> str | None:
    """``file:line`` of the innermost frame in cg_lightning (skipping torch's own frames), else None."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(PACKAGE):
            rel = str(Path(name).relative_to(Path(PACKAGE).parent))
            if (rel, frame.f_code.co_name) in allowed:
                return None
            return f"{rel}:{frame.f_lineno} ({frame.f_code.co_name})"
        if "/torch/" not in name:  # another library's code made the call: not ours to check
            return None
        frame = frame.f_back
    return None


class DeviceAudit(TorchFunctionMode):
    """``with DeviceAudit() as audit: ...`` then ``audit.sites``: {"file:line": factory name}."""

    def __init__(self, allowed: set[tuple[str, str]] = HOST_SIDE) -> None:
        super().__init__()
        self.allowed = set(allowed)
        self.sites: dict[str, str] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None and kwargs.get("generator") is None:
            inherits = func is torch.as_tensor and args and isinstance(args[0], torch.Tensor)
            site = None if inherits else _project_caller(self.allowed)
            if site is not None:
                self.sites.setdefault(site, func.__name__)
        return func(*args, **kwargs)
