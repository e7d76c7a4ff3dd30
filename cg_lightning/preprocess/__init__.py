"""Input preparation: robust image loading, background removal + recentring, x4 super-resolution.

Submodules are imported on demand (rembg and spandrel are slow to import).
"""
