"""cg_lightning: ContrastiveGaussian / DreamGaussian image-to-3D on Lightning + Hydra."""
__version__ = "0.1.0"
