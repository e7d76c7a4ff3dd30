"""Stage-1 data: the reference image and the seeded novel-view camera stream."""

from cg_lightning.data.reference import ReferenceImage
from cg_lightning.data.views import ViewBatch, ViewSampler, ViewStream

__all__ = ["ReferenceImage", "ViewBatch", "ViewSampler", "ViewStream"]
