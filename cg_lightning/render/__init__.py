"""Renderers: ``render.gaussian`` (splatting backends), ``render.mesh`` (triangle rasterization backends)."""
