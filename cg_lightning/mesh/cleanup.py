"""Marching-cubes output -> clean, manifold, evenly tessellated mesh (pymeshlab), as DreamGaussian's ``clean_mesh``.

Why each step (reference §2.9): MC leaves duplicated/degenerate triangles and floaters from stray Gaussians; xatlas
and the glTF export need a manifold mesh; isotropic remeshing gives even triangles for UV packing and texture
baking; the face budget bounds UV/bake/stage-2 time.
"""

from __future__ import annotations

import numpy as np

from cg_lightning.errors import CGError


class EmptyMeshError(CGError):
    """Cleanup removed every face (the surface consisted only of small floaters)."""


def _as_numpy(v, f) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    if hasattr(f, "detach"):
        f = f.detach().cpu().numpy()
    return np.ascontiguousarray(v, dtype=np.float64), np.ascontiguousarray(f, dtype=np.int32)


def clean_mesh(
    v,
    f,
    remesh: bool = True,
    remesh_size: float = 0.015,
    min_component_diam: float = 0.2,
    max_faces: int = 100_000,
    merge_threshold: float = 0.01,
    min_component_faces: int = 64,
    remesh_iters: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Clean a triangle mesh; returns (v (V,3) float32, f (F,3) int64).

    ``v``/``f`` may be numpy arrays or torch tensors. ``min_component_diam`` and ``merge_threshold`` are fractions of
    the bounding-box diagonal; ``remesh_size`` is an absolute target edge length in world units; ``max_faces <= 0``
    disables decimation.
    """
    import pymeshlab as ml

    v, f = _as_numpy(v, f)
    if len(f) == 0 or len(v) == 0:
        raise EmptyMeshError("clean_mesh got an empty mesh (no faces)")
    ms = ml.MeshSet()
    ms.add_mesh(ml.Mesh(vertex_matrix=v, face_matrix=f))

    ms.meshing_remove_unreferenced_vertices()
    ms.meshing_merge_close_vertices(threshold=ml.PercentageValue(100.0 * merge_threshold))
    ms.meshing_remove_duplicate_faces()
    ms.meshing_remove_null_faces()
    if min_component_diam > 0:
        ms.meshing_remove_connected_component_by_diameter(
            mincomponentdiag=ml.PercentageValue(100.0 * min_component_diam)
        )
    if min_component_faces > 0:
        ms.meshing_remove_connected_component_by_face_number(mincomponentsize=int(min_component_faces))
    if ms.current_mesh().face_number() == 0:
        raise EmptyMeshError(
            "cleanup removed every face: the surface consists only of small components (floaters); "
            "lower mesh.iso or check the Gaussians"
        )
    ms.meshing_repair_non_manifold_edges(method="Remove Faces")
    ms.meshing_repair_non_manifold_vertices(vertdispratio=0)
    if remesh:
        ms.meshing_isotropic_explicit_remeshing(
            iterations=int(remesh_iters), targetlen=ml.PureValue(float(remesh_size))
        )
    if max_faces > 0 and ms.current_mesh().face_number() > max_faces:
        ms.meshing_decimation_quadric_edge_collapse(targetfacenum=int(max_faces), optimalplacement=True)
    ms.meshing_remove_unreferenced_vertices()

    m = ms.current_mesh()
    out_v = np.asarray(m.vertex_matrix(), dtype=np.float32)
    out_f = np.asarray(m.face_matrix(), dtype=np.int64)
    if len(out_f) == 0:
        raise EmptyMeshError("cleanup produced an empty mesh; lower mesh.iso or disable mesh.remesh")
    return out_v, out_f
