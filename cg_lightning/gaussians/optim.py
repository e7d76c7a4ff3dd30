"""Adam with one param group per Gaussian property (group["name"] = parameter name) and DG's position LR
schedule."""

from __future__ import annotations

import math

import torch

from cg_lightning.errors import ConfigError
from cg_lightning.gaussians.model import GaussianModel

__all__ = ["build_optimizer", "LogLinearSchedule", "set_lr", "get_group"]


def build_optimizer(model: GaussianModel, lrs: dict[str, float], eps: float = 1e-15) -> torch.optim.Adam:
    """Adam(eps=1e-15 like 3DGS) with groups named after ``GaussianModel.PARAM_NAMES``.

    ``lrs`` must give every name; ``features_rest`` may be omitted and then defaults to ``features_dc / 20``
    (3DGS).
    """
    lrs = dict(lrs)
    unknown = set(lrs) - set(model.PARAM_NAMES)
    if unknown:
        raise ConfigError(
            f"unknown Gaussian learning-rate keys {sorted(unknown)}; valid: {list(model.PARAM_NAMES)}"
        )
    if "features_rest" not in lrs and "features_dc" in lrs:
        lrs["features_rest"] = lrs["features_dc"] / 20.0
    missing = [n for n in model.PARAM_NAMES if n not in lrs]
    if missing:
        raise ConfigError(f"missing Gaussian learning rates for {missing}")
    groups = [
        {"params": [p], "lr": float(lrs[name]), "name": name} for name, p in model.named_tensors().items()
    ]
    return torch.optim.Adam(groups, lr=0.0, eps=eps)


def get_group(optimizer: torch.optim.Optimizer, name: str) -> dict:
    for group in optimizer.param_groups:
        if group.get("name") == name:
            return group
    raise KeyError(f"optimizer has no param group named {name!r}")


def set_lr(optimizer: torch.optim.Optimizer, name: str, lr: float) -> None:
    get_group(optimizer, name)["lr"] = float(lr)


class LogLinearSchedule:
    """3DGS ``get_expon_lr_func``: log-linear interpolation from ``lr_init`` to ``lr_final`` over
    ``max_steps``.

    ``lr(s) = exp((1-t) ln lr_init + t ln lr_final)``, ``t = clip(s / max_steps, 0, 1)``, optionally damped
    during the first ``delay_steps`` by ``delay_mult`` (DreamGaussian uses no delay).
    """

    def __init__(
        self, lr_init: float, lr_final: float, max_steps: int, delay_steps: int = 0, delay_mult: float = 1.0
    ) -> None:
        if max_steps <= 0:
            raise ConfigError(f"max_steps must be positive, got {max_steps}")
        if lr_init < 0 or lr_final < 0:
            raise ConfigError("learning rates must be non-negative")
        self.lr_init, self.lr_final, self.max_steps = float(lr_init), float(lr_final), int(max_steps)
        self.delay_steps, self.delay_mult = int(delay_steps), float(delay_mult)

    def __call__(self, step: int) -> float:
        if step < 0 or (self.lr_init == 0.0 and self.lr_final == 0.0):
            return 0.0
        if self.lr_init == 0.0 or self.lr_final == 0.0:  # log-interpolation undefined; fall back to linear
            t = min(max(step / self.max_steps, 0.0), 1.0)
            return (1 - t) * self.lr_init + t * self.lr_final
        delay = 1.0
        if self.delay_steps > 0:
            delay = self.delay_mult + (1 - self.delay_mult) * math.sin(
                0.5 * math.pi * min(max(step / self.delay_steps, 0.0), 1.0)
            )
        t = min(max(step / self.max_steps, 0.0), 1.0)
        return delay * math.exp((1 - t) * math.log(self.lr_init) + t * math.log(self.lr_final))
