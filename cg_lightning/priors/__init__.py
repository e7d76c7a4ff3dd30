"""2D priors for image-to-3D: the :class:`Prior` interface, Zero123 (real and tiny). Heavy imports are lazy."""

from cg_lightning.priors.base import Prior, SDSOutput, sds_timestep

__all__ = ["Prior", "SDSOutput", "sds_timestep"]
