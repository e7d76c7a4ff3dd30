"""Mesh rendering: the rasterizer protocol, its torch / nvdiffrast backends and :func:`render_mesh`."""

from cg_lightning.render.mesh.base import MeshRasterizer, build_mesh_rasterizer, estimate_uv_da
from cg_lightning.render.mesh.render import MeshRenderOutput, render_mesh
from cg_lightning.render.mesh.torch_backend import TorchMeshRasterizer

__all__ = ["MeshRasterizer", "MeshRenderOutput", "TorchMeshRasterizer", "build_mesh_rasterizer", "estimate_uv_da",
           "render_mesh"]
