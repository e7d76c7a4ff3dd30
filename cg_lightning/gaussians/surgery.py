"""Optimizer surgery for a changing number of Gaussians.

When points are added, removed or reset, the Adam moments must follow the parameters row by row: new rows
start with zero moments, removed rows drop theirs, reset tensors restart from zero. The state-level functions
are pure (new dicts, inputs untouched); the optimizer-level ones build new ``nn.Parameter`` objects, rewire
the optimizer's param groups (matched by ``group["name"]``) and return the new tensors for
``GaussianModel.replace_``. Gradients are carried along too, so surgery before ``optimizer.step()`` does not
silently skip the new parameters.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = [
    "cat_state",
    "mask_state",
    "reset_state",
    "cat_to_optimizer",
    "prune_optimizer",
    "replace_in_optimizer",
]


def _is_per_row(value: object, rows: int) -> bool:
    return isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == rows


def cat_state(state: Mapping[str, object], extra_rows: int, rows: int) -> dict[str, object]:
    """Append ``extra_rows`` zero rows to every per-row tensor of an optimizer state (e.g. exp_avg,
    exp_avg_sq)."""
    out: dict[str, object] = {}
    for key, value in state.items():
        if _is_per_row(value, rows):
            pad = torch.zeros((extra_rows,) + tuple(value.shape[1:]), dtype=value.dtype, device=value.device)
            out[key] = torch.cat([value, pad], dim=0)
        else:
            out[key] = value
    return out


def mask_state(state: Mapping[str, object], keep: Tensor) -> dict[str, object]:
    """Keep only the rows where ``keep`` is True in every per-row tensor of an optimizer state."""
    rows = keep.shape[0]
    return {k: (v[keep] if _is_per_row(v, rows) else v) for k, v in state.items()}


def reset_state(state: Mapping[str, object], rows: int) -> dict[str, object]:
    """Zero the moments (per-row tensors); the step counter is kept, as in 3DGS' opacity reset."""
    return {k: (torch.zeros_like(v) if _is_per_row(v, rows) else v) for k, v in state.items()}


def _group_for(optimizer: torch.optim.Optimizer, name: str, param: Tensor) -> dict:
    for group in optimizer.param_groups:
        if group.get("name") == name:
            if len(group["params"]) != 1 or group["params"][0] is not param:
                raise ValueError(f"optimizer group {name!r} does not hold the model's current parameter")
            return group
    raise KeyError(f"optimizer has no param group named {name!r}")


def _swap(
    optimizer: torch.optim.Optimizer | None,
    name: str,
    old: nn.Parameter,
    new_data: Tensor,
    new_grad: Tensor | None,
    state_fn,
) -> nn.Parameter:
    new = nn.Parameter(new_data, requires_grad=old.requires_grad)
    if new_grad is not None:
        new.grad = new_grad
    if optimizer is not None:
        group = _group_for(optimizer, name, old)
        state = optimizer.state.pop(old, None)
        group["params"][0] = new
        if state:
            optimizer.state[new] = state_fn(state)
    return new


def cat_to_optimizer(
    optimizer: torch.optim.Optimizer | None,
    tensors: Mapping[str, nn.Parameter],
    extensions: Mapping[str, Tensor],
) -> dict[str, nn.Parameter]:
    """Append rows ``extensions[name]`` to each parameter; their Adam moments start at zero."""
    out = {}
    for name, ext in extensions.items():
        old = tensors[name]
        rows, extra = old.shape[0], ext.shape[0]
        data = torch.cat([old.detach(), ext.detach().to(old.dtype)], dim=0)
        grad = (
            None if old.grad is None else torch.cat([old.grad, torch.zeros_like(ext, dtype=old.grad.dtype)])
        )
        out[name] = _swap(optimizer, name, old, data, grad, lambda s, r=rows, e=extra: cat_state(s, e, r))
    return out


def prune_optimizer(
    optimizer: torch.optim.Optimizer | None, tensors: Mapping[str, nn.Parameter], keep: Tensor
) -> dict[str, nn.Parameter]:
    """Keep rows where ``keep`` (bool, N) is True in every parameter and its Adam moments."""
    keep = keep.to(torch.bool)
    out = {}
    for name, old in tensors.items():
        if old.shape[0] != keep.shape[0]:
            raise ValueError(f"mask has {keep.shape[0]} rows but {name} has {old.shape[0]}")
        grad = None if old.grad is None else old.grad[keep]
        out[name] = _swap(optimizer, name, old, old.detach()[keep], grad, lambda s, m=keep: mask_state(s, m))
    return out


def replace_in_optimizer(
    optimizer: torch.optim.Optimizer | None, tensors: Mapping[str, nn.Parameter], name: str, value: Tensor
) -> dict[str, nn.Parameter]:
    """Replace one parameter by ``value`` (same shape) and zero its Adam moments (3DGS ``reset_opacity``)."""
    old = tensors[name]
    if value.shape != old.shape:
        raise ValueError(
            f"replacement for {name} has shape {tuple(value.shape)}, expected {tuple(old.shape)}"
        )
    rows = old.shape[0]
    new = _swap(
        optimizer, name, old, value.detach().to(old.dtype).clone(), None, lambda s, r=rows: reset_state(s, r)
    )
    return {name: new}
