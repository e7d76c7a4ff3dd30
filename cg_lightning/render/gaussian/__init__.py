"""Differentiable Gaussian rasterizers behind one protocol: ``torch`` (PyTorch), ``gsplat``, ``inria``."""

from cg_lightning.render.gaussian.base import (
    BACKENDS,
    GaussianRasterizer,
    GaussianRenderOutput,
    build_gaussian_rasterizer,
)

__all__ = ["BACKENDS", "GaussianRasterizer", "GaussianRenderOutput", "build_gaussian_rasterizer"]
