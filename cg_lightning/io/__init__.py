"""File outputs that are not meshes: turntable videos."""

from cg_lightning.io.video import turntable_cameras, write_mp4

__all__ = ["turntable_cameras", "write_mp4"]
