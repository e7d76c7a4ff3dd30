"""Triangle meshes: the :class:`Mesh` container, extraction from Gaussians, cleanup, UV, baking and export."""

from cg_lightning.mesh.mesh import Mesh

__all__ = ["Mesh"]
