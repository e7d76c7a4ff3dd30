"""Renders of one job's outputs kept for the job, so that each (thing, camera) is rendered once.

Why: the export step's turntable and the ground-truth evaluation look at the same objects from some of the same
cameras (a 24-frame turntable at elevation 0 contains the 8 elevation-0 evaluation views), and the true mesh is the
reference of three comparisons (stage-1 Gaussians, coarse and final mesh). Rendering the same deterministic view
again only costs time. A render is reused only for an identical camera (pose bytes, fov, size, clip planes) and
the same renderer (``tag``: backend class and device), so every metric is exactly what a fresh render gives.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable

from torch import Tensor

from cg_lightning.cameras import Camera

#: camera -> (image (3,H,W), coverage (1,H,W))
RenderFn = Callable[[Camera], tuple[Tensor, Tensor]]


def camera_key(cam: Camera) -> tuple:
    """Exact identity of a camera: two cameras with the same key give bit-identical renders."""
    return (cam.c2w.detach().cpu().double().numpy().tobytes(), float(cam.fovy), int(cam.width), int(cam.height),
            float(cam.near), float(cam.far))


class RenderMemo:
    """``(name, tag, camera) -> (image, alpha)`` on the CPU, for one job (the job context holds one)."""

    def __init__(self) -> None:
        self._store: dict[tuple, tuple[Tensor, Tensor]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def wrap(self, name: str, tag: Hashable, render: RenderFn, keep: Collection[tuple] | None = None) -> RenderFn:
        """``render`` that answers from the memo when it can; it stores new renders whose camera key is in
        ``keep`` (None: all of them)."""

        def memoised(cam: Camera) -> tuple[Tensor, Tensor]:
            cam_key = camera_key(cam)
            key = (name, tag, cam_key)
            if key in self._store:
                self.hits += 1
                return self._store[key]
            self.misses += 1
            image, alpha = render(cam)
            out = (image.detach().float().cpu(), alpha.detach().float().cpu())
            if keep is None or cam_key in keep:
                self._store[key] = out
            return out

        return memoised

    def forget(self, name: str | None = None) -> None:
        """Drop the renders of ``name`` (all of them when None), e.g. once the evaluation is over."""
        self._store = {k: v for k, v in self._store.items() if name is not None and k[0] != name}
