"""ContrastiveGaussian's Quantity-Aware Triplet loss (QA-Triplet), in two variants.

Common to both: the anchor A is the reference image (RGB on white, reference size); each sample k gets an LPIPS
score s_k = LPIPS(sample_k, A) and is a positive when s_k < threshold (0.3), a negative otherwise. With
w_p = log2(1 + |P|), w_n = log2(1 + |N|) and per-case margins:

    |P| = 0 :  mean_n      max(0, -w_n d(A,n) + m_neg_only)
    |N| = 0 :  mean_p      max(0,  w_p d(A,p) + m_pos_only)
    both    :  mean_{p,n}  max(0,  w_p d(A,p) - w_n d(A,n) + m_mixed)

``official`` (what the released code does, reference §1.4): samples = the step's Gaussian renders of the random
novel views, bilinearly resized to the reference size; d = Frobenius L2 in pixel space; margins 2500 / 0.2 / 1450;
LPIPS fed [0,1] images without ``normalize`` (the 0.3 threshold was calibrated under that quirk).

``paper`` (our reading of the paper text, §III-A and §IV-A): samples are "images generated from specific viewpoints
using a 2D diffusion prior". We generate them with ``prior.refine`` of the step's renders (image-to-image at the
same views; ``novel_views`` would sample views unrelated to the current Gaussians and give no gradient) and pass
gradients to the renders with a straight-through estimator: sample = render + sg(refined - render). The
"embedding distance" is taken in LPIPS feature space: d(a, b) = sqrt(mean_l mean_hw ||f_l(a) - f_l(b)||^2) / 2
with f_l the channel-normalised backbone features, so d is in [0, 1]. The "dynamically adjusted margin" is read as
a margin schedule over training (any :mod:`cg_lightning.schedules` object per case; see
``conf/loss/contrastive_paper.yaml`` for the defaults and their derivation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from cg_lightning.errors import ConfigError
from cg_lightning.losses.base import LossContext, LossTerm
from cg_lightning.schedules import Schedule, as_schedule

CASE_NEG_ONLY, CASE_POS_ONLY, CASE_MIXED = 0, 1, 2


class PerceptualModel(Protocol):
    """What QA-Triplet needs from LPIPS: per-sample distances and (paper variant) backbone features."""

    def __call__(self, x: Tensor, y: Tensor) -> Tensor: ...

    def features(self, x: Tensor) -> Sequence[Tensor]: ...


def quantity_weight(count: int) -> float:
    """w = log2(1 + count): more samples of a kind weigh more, sub-linearly."""
    return math.log2(1 + count)


def split_by_score(scores: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Indices of positives (score < threshold) and negatives (score >= threshold)."""
    positive = scores < threshold
    return positive.nonzero().flatten(), (~positive).nonzero().flatten()


def qa_triplet(d_pos: Tensor, d_neg: Tensor, margin_neg_only: float, margin_pos_only: float,
               margin_mixed: float) -> tuple[Tensor, int]:
    """The QA-Triplet value from anchor distances of positives (P,) and negatives (N,); returns (loss, case)."""
    n_pos, n_neg = int(d_pos.numel()), int(d_neg.numel())
    if n_pos == 0 and n_neg == 0:
        raise ValueError("QA-Triplet needs at least one sample")
    w_p, w_n = quantity_weight(n_pos), quantity_weight(n_neg)
    if n_pos == 0:
        return F.relu(-w_n * d_neg + margin_neg_only).mean(), CASE_NEG_ONLY
    if n_neg == 0:
        return F.relu(w_p * d_pos + margin_pos_only).mean(), CASE_POS_ONLY
    pairs = w_p * d_pos[:, None] - w_n * d_neg[None, :] + margin_mixed
    return F.relu(pairs).mean(), CASE_MIXED


def pixel_l2(anchor: Tensor, samples: Tensor) -> Tensor:
    """Frobenius norm ||A - x_k|| over all pixels and channels, per sample: (B,)."""
    return torch.linalg.vector_norm((samples - anchor).flatten(1), dim=1)


def _unit_channels(f: Tensor, eps: float = 1e-10) -> Tensor:
    return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def feature_distance(anchor_features: Sequence[Tensor], sample_features: Sequence[Tensor]) -> Tensor:
    """Normalised LPIPS-feature distance in [0,1] per sample (B,): sqrt(mean_l mean_hw ||f̂_a - f̂_x||^2) / 2."""
    if len(anchor_features) != len(sample_features) or not anchor_features:
        raise ValueError("anchor and sample feature lists must be non-empty and of equal length")
    per_layer = []
    for fa, fx in zip(anchor_features, sample_features, strict=True):
        diff = _unit_channels(fx) - _unit_channels(fa)
        per_layer.append(diff.pow(2).sum(dim=1).mean(dim=(1, 2)))
    mean_sq = torch.stack(per_layer, dim=0).mean(dim=0)
    return (mean_sq + 1e-12).sqrt() / 2.0


class QATripletLoss(LossTerm):
    """QA-Triplet loss term; ``variant`` = ``official`` | ``paper`` (see module docstring).

    ``lpips`` injects a perceptual model (tests); otherwise ``cg_lightning.perceptual.lpips.LPIPS`` is built on
    first use with ``lpips_net``/``lpips_normalize``/``lpips_pretrained``. ``compare_size`` sets the resolution
    at which samples meet the anchor (None = the reference size, as in the official code).
    """

    VARIANTS = ("official", "paper")

    def __init__(self, weight: float | Schedule = 1.0, variant: str = "official", threshold: float = 0.3,
                 margin_neg_only: float | Schedule = 2500.0, margin_pos_only: float | Schedule = 0.2,
                 margin_mixed: float | Schedule = 1450.0, lpips_net: str = "vgg", lpips_normalize: bool = False,
                 lpips_pretrained: bool = True, lpips: Any = None, compare_size: int | None = None,
                 refine_strength: float = 0.8, refine_steps: int = 50) -> None:
        super().__init__(weight)
        if variant not in self.VARIANTS:
            raise ConfigError(f"loss.qa_triplet.variant={variant!r}; expected one of {self.VARIANTS}")
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"loss.qa_triplet.threshold must be in [0, 1] (an LPIPS distance), got {threshold}")
        if not 0.0 <= refine_strength <= 1.0:
            raise ConfigError(f"loss.qa_triplet.refine_strength must be in [0, 1], got {refine_strength}")
        self.variant, self.threshold = variant, float(threshold)
        self.margin_neg_only = as_schedule(margin_neg_only)
        self.margin_pos_only = as_schedule(margin_pos_only)
        self.margin_mixed = as_schedule(margin_mixed)
        self.lpips_net, self.lpips_normalize, self.lpips_pretrained = lpips_net, bool(lpips_normalize), lpips_pretrained
        self.lpips = lpips
        self.compare_size = compare_size
        self.refine_strength, self.refine_steps = float(refine_strength), int(refine_steps)
        self._anchor_cache: tuple[tuple, list[Tensor]] | None = None

    # -- helpers -----------------------------------------------------------------------------------------------
    def setup(self, device: torch.device) -> None:
        if self.lpips is None:
            from cg_lightning.perceptual.lpips import LPIPS

            self.lpips = LPIPS(net=self.lpips_net, normalize=self.lpips_normalize, pretrained=self.lpips_pretrained)
        if isinstance(self.lpips, torch.nn.Module):
            self.lpips = self.lpips.to(device).eval().requires_grad_(False)

    def _resize(self, images: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(images.shape[-2:]) == size:
            return images
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False)

    def _scores(self, samples: Tensor, anchor: Tensor) -> Tensor:
        with torch.no_grad():
            return self.lpips(samples.detach(), anchor.expand(samples.shape[0], -1, -1, -1)).reshape(-1).float()

    def _anchor_features(self, anchor: Tensor) -> list[Tensor]:
        key = (anchor.data_ptr(), tuple(anchor.shape), anchor.device, anchor._version)
        if self._anchor_cache is None or self._anchor_cache[0] != key:
            with torch.no_grad():
                self._anchor_cache = (key, [f.detach() for f in self.lpips.features(anchor)])
        return self._anchor_cache[1]

    def margins(self, step: int, total_steps: int) -> tuple[float, float, float]:
        return (float(self.margin_neg_only(step, total_steps)), float(self.margin_pos_only(step, total_steps)),
                float(self.margin_mixed(step, total_steps)))

    # -- samples and distances per variant ---------------------------------------------------------------------
    def samples_and_distances(self, ctx: LossContext, anchor: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(samples at anchor size, LPIPS scores (B,), anchor distances (B,) with grad)."""
        size = tuple(anchor.shape[-2:])
        if self.variant == "official":
            samples = self._resize(ctx.novel_images, size)
            return samples, self._scores(samples, anchor), pixel_l2(anchor, samples)
        if ctx.prior is None:
            raise ConfigError("loss.qa_triplet.variant=paper needs a prior to generate the samples")
        v = ctx.views
        refined = ctx.prior.refine(ctx.novel_images.detach(), v.d_elev, v.d_azim, v.d_radius,
                                   strength=self.refine_strength, steps=self.refine_steps)
        renders = self._resize(ctx.novel_images, size)
        refined = self._resize(refined.to(renders.dtype), size)
        samples = renders + (refined - renders).detach()  # value of the prior's image, gradient into the render
        dist = feature_distance(self._anchor_features(anchor), self.lpips.features(samples))
        return samples, self._scores(refined, anchor), dist

    def forward(self, ctx: LossContext, logs: dict[str, float]) -> Tensor:
        if self.lpips is None:
            self.setup(ctx.novel_images.device)
        anchor = ctx.ref_rgb
        if self.compare_size is not None:
            anchor = self._resize(anchor, (self.compare_size, self.compare_size))
        _, scores, dist = self.samples_and_distances(ctx, anchor)
        pos, neg = split_by_score(scores, self.threshold)
        m_neg, m_pos, m_mix = self.margins(ctx.step, ctx.total_steps)
        loss, case = qa_triplet(dist[pos], dist[neg], m_neg, m_pos, m_mix)
        logs.update({"num_pos": float(pos.numel()), "num_neg": float(neg.numel()), "case": float(case),
                     "lpips_mean": float(scores.mean()), "dist_mean": float(dist.detach().mean()),
                     "margin": (m_neg, m_pos, m_mix)[case]})
        for k, s in enumerate(scores.tolist()):
            logs[f"lpips_{k}"] = float(s)
        return loss
