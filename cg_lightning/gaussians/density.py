"""Adaptive density control (clone / split / prune / opacity reset) with DreamGaussian's defaults.

Statistics are buffers so they travel in Lightning checkpoints. Call order per training step, as in DG:
``loss.backward(); optimizer.step(); optimizer.zero_grad(); controller.after_backward(step, model, optimizer,
out)`` where ``out`` is the render whose screen-space gradient should count (DG: the last novel-view render of
the step). The ``means2d`` gradient survives ``zero_grad`` because it is not a parameter.

Faithful quirks: inside ``densify_and_prune`` the screen-size prune of 3DGS (``max_radii2D > 1``) is never
effective in DG because the statistics are reset right before that prune, so it is not applied there. The final
prune after training (``final_prune``, DG/CG ``prune(min_opacity=0.01, extent=1, max_screen_size=1)``) does use
the tracked ``max_radii2d``: with a step count that is a multiple of the densification interval the statistics were
just reset and only opacity and world scale matter, otherwise Gaussians whose screen radius exceeded
``max_screen_size`` pixels since the last densification are removed too.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cg_lightning.errors import ConfigError
from cg_lightning.gaussians.model import GaussianModel, inverse_sigmoid, quat_to_rotmat
from cg_lightning.gaussians.surgery import cat_to_optimizer, prune_optimizer, replace_in_optimizer
from cg_lightning.render.gaussian.base import GaussianRenderOutput

__all__ = ["DensityController"]


class DensityController(nn.Module):
    """Accumulates ||dL/d means2d|| (NDC units) of visible Gaussians and densifies/prunes on schedule."""

    def __init__(
        self,
        grad_threshold: float = 0.01,
        percent_dense: float = 0.01,
        extent: float = 4.0,
        densify_from: int = 100,
        densify_until: int = 3000,
        interval: int = 100,
        opacity_reset_interval: int = 700,
        min_opacity: float = 0.01,
        max_world_scale_frac: float = 0.1,
        split_n: int = 2,
        generator: torch.Generator | None = None,
        max_points: int | None = None,
    ) -> None:
        super().__init__()
        for name, value, ok in (("interval", interval, interval >= 1),
                                ("opacity_reset_interval", opacity_reset_interval, opacity_reset_interval >= 1),
                                ("split_n", split_n, split_n >= 1), ("grad_threshold", grad_threshold, grad_threshold >= 0),
                                ("percent_dense", percent_dense, 0 <= percent_dense <= 1),
                                ("min_opacity", min_opacity, 0 <= min_opacity <= 1), ("extent", extent, extent > 0)):
            if not ok:
                raise ConfigError(f"DensityController: {name}={value} is out of range")
        self.grad_threshold, self.percent_dense, self.extent = (
            float(grad_threshold),
            float(percent_dense),
            float(extent),
        )
        self.densify_from, self.densify_until, self.interval = (
            int(densify_from),
            int(densify_until),
            int(interval),
        )
        self.opacity_reset_interval, self.min_opacity = int(opacity_reset_interval), float(min_opacity)
        self.max_world_scale_frac, self.split_n = float(max_world_scale_frac), int(split_n)
        if max_points is not None and int(max_points) < 1:
            raise ConfigError(f"DensityController: max_points={max_points} must be >= 1 (or null: no cap)")
        self.max_points = None if max_points is None else int(max_points)
        self.generator = generator
        self.register_buffer("grad_accum", torch.zeros(0))
        self.register_buffer("denom", torch.zeros(0))
        self.register_buffer("max_radii2d", torch.zeros(0))

    # ------------------------------------------------------------------ statistics
    def resize_(self, n: int) -> None:
        """Zero statistics for ``n`` points (after surgery, or before loading a checkpoint of that size)."""
        dev = self.grad_accum.device
        self.grad_accum = torch.zeros(int(n), device=dev)
        self.denom = torch.zeros(int(n), device=dev)
        self.max_radii2d = torch.zeros(int(n), device=dev)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        key = prefix + "grad_accum"
        if key in state_dict and state_dict[key].shape != self.grad_accum.shape:
            self.resize_(state_dict[key].shape[0])
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def before_backward(self, out: GaussianRenderOutput) -> None:
        """Make sure the screen-space gradient of ``out`` will be kept (renderers already retain it)."""
        if out.means2d.requires_grad and not out.means2d.is_leaf:
            out.means2d.retain_grad()

    @torch.no_grad()
    def accumulate(self, out: GaussianRenderOutput) -> None:
        """3DGS ``add_densification_stats`` plus the max screen radius, for Gaussians with radius > 0."""
        n = out.radii.shape[0]
        if self.grad_accum.shape[0] != n:
            self.resize_(n)
        vis = out.radii > 0
        grad = out.means2d.grad
        if grad is not None:
            self.grad_accum[vis] += torch.linalg.vector_norm(grad[vis, :2].to(self.grad_accum), dim=-1)
        self.denom[vis] += 1.0
        self.max_radii2d[vis] = torch.maximum(self.max_radii2d[vis], out.radii[vis].to(self.max_radii2d))

    def mean_grads(self) -> Tensor:
        g = self.grad_accum / self.denom
        return torch.nan_to_num(g, nan=0.0)

    # ------------------------------------------------------------------ schedule
    def after_backward(
        self,
        step: int,
        model: GaussianModel,
        optimizer: torch.optim.Optimizer | None,
        out: GaussianRenderOutput,
    ) -> dict[str, int | float]:
        """Accumulate stats and densify / reset on DG's schedule; returns counts for logging."""
        stats: dict[str, int | float] = {"cloned": 0, "split": 0, "pruned": 0, "opacity_reset": 0}
        if out.radii.shape[0] != model.num_points:
            raise ValueError(
                f"render has {out.radii.shape[0]} Gaussians but the model has {model.num_points}; "
                "call after_backward with the render of the current step"
            )
        if self.densify_from <= step <= self.densify_until:
            self.accumulate(out)
            if step % self.interval == 0:
                stats.update(self.densify_and_prune(model, optimizer))
            if step % self.opacity_reset_interval == 0:
                self.reset_opacity(model, optimizer)
                stats["opacity_reset"] = 1
        stats["num_points"] = model.num_points
        return stats

    # ------------------------------------------------------------------ operations
    def _append(self, model: GaussianModel, optimizer, new: dict[str, Tensor]) -> None:
        model.replace_(cat_to_optimizer(optimizer, model.named_tensors(), new))
        self.resize_(model.num_points)

    def _prune(self, model: GaussianModel, optimizer, remove: Tensor) -> None:
        keep = ~remove
        model.replace_(prune_optimizer(optimizer, model.named_tensors(), keep))
        if self.grad_accum.shape[0] == keep.shape[0]:
            self.grad_accum = self.grad_accum[keep]
            self.denom = self.denom[keep]
            self.max_radii2d = self.max_radii2d[keep]
        else:
            self.resize_(model.num_points)

    @torch.no_grad()
    def densify_and_prune(self, model: GaussianModel, optimizer) -> dict[str, int]:
        """Clone small / split large Gaussians with mean grad >= threshold, then prune faint or huge ones."""
        grads = self.mean_grads()
        if grads.shape[0] != model.num_points:
            grads = torch.zeros(model.num_points, device=model.xyz.device)
        size_cut = self.percent_dense * self.extent
        if self.max_points is not None:
            grads = self._cap_candidates(grads, model.scales.max(dim=1).values > size_cut, model.num_points)

        # clone: copies of small, high-gradient Gaussians
        max_scale = model.scales.max(dim=1).values
        clone = (grads >= self.grad_threshold) & (max_scale <= size_cut)
        n_clone = int(clone.sum())
        self._append(model, optimizer, {k: v.detach()[clone] for k, v in model.named_tensors().items()})

        # split: large, high-gradient Gaussians (clones count as zero gradient) -> split_n samples, scale /
        # (0.8 n)
        grads = torch.cat([grads, grads.new_zeros(n_clone)])
        max_scale = model.scales.max(dim=1).values
        split = (grads >= self.grad_threshold) & (max_scale > size_cut)
        n_split = int(split.sum())
        k = self.split_n
        scales = model.scales[split].repeat(k, 1)
        noise = self.split_noise(scales)
        rots = quat_to_rotmat(model.rotation[split]).repeat(k, 1, 1)
        new = {
            name: t.detach()[split].repeat(k, *([1] * (t.dim() - 1)))
            for name, t in model.named_tensors().items()
        }
        new["xyz"] = (rots @ (noise * scales)[..., None])[..., 0] + model.xyz.detach()[split].repeat(k, 1)
        new["scaling"] = torch.log(scales / (0.8 * k))
        self._append(model, optimizer, new)
        self._prune(model, optimizer, torch.cat([split, split.new_zeros(k * n_split)]))

        # prune: transparent or too large in world space
        remove = (model.opacities[:, 0] < self.min_opacity) | (
            model.scales.max(dim=1).values > self.max_world_scale_frac * self.extent
        )
        n_pruned = int(remove.sum())
        self._prune(model, optimizer, remove)
        self.resize_(model.num_points)  # 3DGS resets all statistics after densification
        return {"cloned": n_clone, "split": n_split, "pruned": n_pruned}

    def _cap_candidates(self, grads: Tensor, large: Tensor, n: int) -> Tensor:
        """``max_points``: keep only the highest-gradient candidates whose clones (+1 each) and splits
        (+``split_n - 1`` each) fit under the cap; the others get gradient 0 (not densified this time)."""
        cand = torch.nonzero(grads >= self.grad_threshold).squeeze(1)
        cost = torch.where(large[cand], self.split_n - 1, 1)
        order = torch.argsort(grads[cand], descending=True, stable=True)
        fits = torch.cumsum(cost[order], 0) <= max(0, self.max_points - n)
        out = torch.zeros_like(grads)
        keep = cand[order[fits]]
        out[keep] = grads[keep]
        return out

    def split_noise(self, scales: Tensor) -> Tensor:
        """Standard normals of ``scales``' shape for the split offsets (``torch.normal(0, std)`` in 3DGS draws
        ``z * std``); a method so that a test can inject recorded draws."""
        return torch.randn(scales.shape, device=scales.device, dtype=scales.dtype, generator=self.generator)

    @torch.no_grad()
    def reset_opacity(self, model: GaussianModel, optimizer, value: float = 0.01) -> None:
        """Clamp opacities to at most ``value`` and restart their Adam moments (3DGS ``reset_opacity``)."""
        new = inverse_sigmoid(torch.clamp(model.opacities, max=value))
        model.replace_(replace_in_optimizer(optimizer, model.named_tensors(), "opacity", new))

    @torch.no_grad()
    def final_prune(
        self, model: GaussianModel, optimizer, min_opacity: float = 0.01, max_scale: float = 0.1,
        max_screen_size: float = 1.0,
    ) -> int:
        """After training, 3DGS ``prune(min_opacity, extent, max_screen_size)`` (DG/CG: 0.01, extent 1, 1; here
        ``max_scale`` = 0.1 * extent): drop opacity < ``min_opacity``, and, when ``max_screen_size`` is non-zero,
        max screen radius > ``max_screen_size`` pixels or max world scale > ``max_scale`` (official: with
        ``max_screen_size`` 0 neither size term applies)."""
        remove = model.opacities[:, 0] < min_opacity
        if max_screen_size:
            radii = self.max_radii2d.to(remove.device)
            if radii.shape[0] != model.num_points:  # no statistics for this model (e.g. loaded from a .ply)
                radii = torch.zeros(model.num_points, device=remove.device)
            remove = remove | (radii > max_screen_size) | (model.scales.max(dim=1).values > max_scale)
        n = int(remove.sum())
        self._prune(model, optimizer, remove)
        return n
