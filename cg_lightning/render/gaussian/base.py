"""The Gaussian rasterizer protocol shared by all backends, and the backend factory."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor

from cg_lightning.errors import CGError, ConfigError

if TYPE_CHECKING:
    from cg_lightning.cameras import Camera
    from cg_lightning.gaussians.model import GaussianModel

__all__ = [
    "GaussianRenderOutput",
    "GaussianRasterizer",
    "build_gaussian_rasterizer",
    "BACKENDS",
    "gaussian_colors",
    "resolve_backend",
    "PAPER_EXPERIMENTS",
    "GSPLAT_DEVIATIONS",
]

BACKENDS = ("auto", "torch", "gsplat", "inria")
AUTO_ORDER = ("inria", "gsplat")  # then torch: the official rasterizer first, gsplat only when it is missing
PAPER_EXPERIMENTS = frozenset({"full", "paper", "dreamgaussian", "no_sr", "no_qa_triplet", "no_refine"})
GSPLAT_DEVIATIONS = (
    "gsplat differs from the official diff-gaussian-rasterization: alpha is clamped at 0.999 (official 0.99) and "
    "a Gaussian covers its per-axis 3.33-sigma box (official: 3 sigma of its major axis), so faint rims and "
    "near-opaque pixels render differently; install the official rasterizer with `make install-gpu` "
    "(README, Deviations from the official code)"
)

log = logging.getLogger("cg_lightning")
_warned_gsplat = False


@dataclass
class GaussianRenderOutput:
    """One rendered view.

    ``means2d`` holds the projected centres in NDC (x right, y down, [-1, 1] across the image) for every
    Gaussian, with its gradient retained: after backward ``.grad`` is dL/d(NDC position) through the splatting
    only, i.e. exactly diff-gaussian-rasterization's viewspace-point gradient, so DreamGaussian's 0.01
    densification threshold keeps its meaning on every backend (torch: pixel = NDC * (W/2, H/2) + (W/2, H/2)
    is computed from it; gsplat: its pixel means are re-expressed through it; inria: it is the kernel's
    means2D input).
    """

    image: Tensor  # (3, H, W) in [0, 1], composited over the background
    alpha: Tensor  # (1, H, W) accumulated opacity 1 - T
    depth: Tensor  # (1, H, W) sum_i w_i z_i (not normalised by alpha, like DG's rasterizer fork)
    radii: Tensor  # (N,) int32 screen radius in pixels, 0 = not visible
    means2d: Tensor  # (N, 2) NDC centres, grad retained (see above)

    @property
    def visibility(self) -> Tensor:
        return self.radii > 0


@runtime_checkable
class GaussianRasterizer(Protocol):
    name: str

    def render(
        self, model: GaussianModel, camera: Camera, bg_color: Tensor, scale_modifier: float = 1.0
    ) -> GaussianRenderOutput: ...


def gaussian_colors(model: GaussianModel, camera: Camera) -> Tensor:
    """RGB per Gaussian (N, 3): DC colour for degree 0, view-dependent SH from the camera centre otherwise."""
    if model.sh_degree == 0:
        return model.colors
    from cg_lightning.gaussians.sh import eval_sh

    dirs = torch.nn.functional.normalize(model.means - camera.position.to(model.means), dim=-1)
    return (eval_sh(model.sh_degree, model.sh, dirs) + 0.5).clamp_min(0.0)


def _cuda_backend_available(name: str) -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        if name == "inria":
            import diff_gaussian_rasterization  # noqa: F401
        else:
            import gsplat  # noqa: F401
    except Exception:
        return False
    return True


def resolve_backend(backend: str = "auto") -> str:
    """The concrete backend for a ``renderer.gaussian`` value: ``auto`` prefers the official
    diff-gaussian-rasterization (``inria``), then ``gsplat``, when CUDA is available and the package imports,
    else ``torch``."""
    backend = str(backend).lower()
    if backend not in BACKENDS:
        raise ConfigError(f"unknown gaussian rasterizer backend {backend!r}; choose one of {list(BACKENDS)}")
    if backend == "auto":
        backend = next((b for b in AUTO_ORDER if _cuda_backend_available(b)), "torch")
    return backend


def warn_if_deviating(backend: str, experiment: str | None) -> bool:
    """Log, once per process, what changes when a paper experiment renders with gsplat. True if it warned."""
    global _warned_gsplat
    if backend != "gsplat" or experiment not in PAPER_EXPERIMENTS or _warned_gsplat:
        return False
    _warned_gsplat = True
    log.warning("renderer.gaussian=gsplat in paper experiment %r: %s", experiment, GSPLAT_DEVIATIONS)
    return True


def build_gaussian_rasterizer(backend: str = "auto", experiment: str | None = None, **kwargs) -> GaussianRasterizer:
    """Make a rasterizer: ``torch`` (pure PyTorch, CPU/CUDA), ``gsplat``, ``inria``
    (diff-gaussian-rasterization); ``auto`` as :func:`resolve_backend`.

    ``experiment`` (the job's ``experiment_name``) only decides whether to warn that gsplat deviates from the
    official rasterizer in a paper experiment.
    """
    backend = resolve_backend(backend)
    warn_if_deviating(backend, experiment)
    if backend == "torch":
        from cg_lightning.render.gaussian.torch_backend import TorchGaussianRasterizer

        return TorchGaussianRasterizer(**kwargs)
    if backend == "gsplat":
        from cg_lightning.render.gaussian.gsplat_backend import GsplatRasterizer

        return GsplatRasterizer(**kwargs)
    from cg_lightning.render.gaussian.inria_backend import InriaRasterizer

    return InriaRasterizer(**kwargs)


def require_cuda(tensor: Tensor, backend: str) -> None:
    if tensor.device.type != "cuda":
        raise CGError(
            f"the {backend!r} gaussian rasterizer needs CUDA tensors, got device {tensor.device}; "
            f"use renderer backend 'torch' (or 'auto') on this machine"
        )
