"""3D Gaussians: the parameter container, its optimizer plumbing, density control and .ply I/O."""

from cg_lightning.gaussians.density import DensityController
from cg_lightning.gaussians.model import GaussianModel
from cg_lightning.gaussians.optim import LogLinearSchedule, build_optimizer
from cg_lightning.gaussians.ply import load_ply, save_ply

__all__ = [
    "DensityController",
    "GaussianModel",
    "LogLinearSchedule",
    "build_optimizer",
    "load_ply",
    "save_ply",
]
