"""An imperfect ground-truth prior: true renders spoiled the way Zero-1-to-3's novel views are.

Why: the perfect oracle answers every view consistently, so nothing that is meant to cope with an unreliable prior
(the paper's QA-Triplet, which sorts novel views into good and bad ones) can show an effect against it. This prior
keeps the ground truth (so results can still be scored against the true mesh) but, per call and per view, draws
from a seeded generator the inconsistencies a single-image diffusion model shows:

- ``blur_sigma``: a Gaussian blur of the view (Zero123 renders soft, detail-poor novel views), sigma in pixels at
  the prior's resolution, drawn uniformly from the range;
- ``gain_std`` / ``exposure_std`` / ``offset_std``: a colour cast (per-channel gain), an exposure change (one
  log-normal gain) and a brightness offset, applied to the object only (the white background stays white, as in
  Zero123's outputs);
- ``elevation_error_deg`` / ``azimuth_error_deg`` / ``radius_error``: the view is rendered from a slightly wrong
  pose (normal errors with these standard deviations), as Zero123's camera conditioning is only approximately obeyed;
- ``wrong_content_prob``: with this probability the view shows wrong content, one of ``wrong_content_modes``:
  ``mirror`` (the view from the mirrored azimuth ``-a``: left and right swapped), ``offset`` (the view from an
  azimuth off by ``offset_range_deg`` in a random direction), ``janus`` (a back view, ``|a| > 90``, shows the front
  painted on the back: the opposite view, mirrored; for front views it falls back to ``mirror``).

Determinism: each call seeds its own generator from ``seed`` and one draw of torch's global generator, which the
stages reseed from (seed, step) at every step; so a run (and a resumed run) sees the same spoiled views, and two
seeds see different ones. ``sds`` / ``refine`` / ``novel_views`` all use the spoiled views; ``refine`` on a
geometry (stage 2, ``refine_target: aligned``, this prior's default) adds the colour errors, the blur and the wrong
content on top of the truth re-projected onto that geometry, without the pose error (see
:meth:`NoisyOraclePrior.refine`): Zero123's refine at strength 0.8-0.95 keeps the layout of the render it is given.
Measured on a torus coarse mesh (29.91 dB): stage 2 with the spoiled true renders as targets 27.66 dB, with the
aligned refine 29.22 dB (the perfect oracle: 30.77).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cg_lightning.errors import ConfigError
from cg_lightning.mesh.mesh import Mesh
from cg_lightning.priors.base import check_relative_views
from cg_lightning.priors.oracle import OraclePrior

WRONG_CONTENT_MODES = ("mirror", "offset", "janus")


@dataclass(frozen=True)
class ViewSpoil:
    """What was done to one view (kept for tests and logging)."""

    elevation_deg: float
    azimuth_deg: float
    radius: float
    blur_sigma: float
    gain: tuple[float, float, float]
    offset: float
    wrong_content: str | None


def _wrap_deg(a: float) -> float:
    return (a + 180.0) % 360.0 - 180.0


def gaussian_blur(image: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (C,H,W) with replicate padding; sigma <= 0.05 px is the identity."""
    if sigma <= 0.05:
        return image
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c = image.shape[0]
    img = F.pad(image[None], (radius, radius, radius, radius), mode="replicate")
    img = F.conv2d(img, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    img = F.conv2d(img, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return img[0]


class NoisyOraclePrior(OraclePrior):
    """:class:`OraclePrior` whose views are blurred, colour-shifted, slightly mis-posed and sometimes wrong."""

    def __init__(self, *args, seed: int = 0, blur_sigma: Sequence[float] = (0.0, 1.5), gain_std: float = 0.05,
                 exposure_std: float = 0.1, offset_std: float = 0.02, elevation_error_deg: float = 3.0,
                 azimuth_error_deg: float = 5.0, radius_error: float = 0.03, wrong_content_prob: float = 0.15,
                 wrong_content_modes: Sequence[str] = WRONG_CONTENT_MODES,
                 offset_range_deg: Sequence[float] = (30.0, 90.0), **kwargs) -> None:
        kwargs.setdefault("refine_target", "aligned")  # a refine keeps the render's layout (module docstring)
        super().__init__(*args, **kwargs)
        if len(blur_sigma) != 2 or not 0 <= blur_sigma[0] <= blur_sigma[1]:
            raise ConfigError(f"prior.blur_sigma must be [min, max] with 0 <= min <= max, got {list(blur_sigma)}")
        if len(offset_range_deg) != 2 or not 0 <= offset_range_deg[0] <= offset_range_deg[1] <= 180:
            raise ConfigError(f"prior.offset_range_deg must be [min, max] within [0, 180], got {list(offset_range_deg)}")
        for name, value in (("gain_std", gain_std), ("exposure_std", exposure_std), ("offset_std", offset_std),
                            ("elevation_error_deg", elevation_error_deg), ("azimuth_error_deg", azimuth_error_deg),
                            ("radius_error", radius_error)):
            if value < 0:
                raise ConfigError(f"prior.{name}={value} must be >= 0")
        if not 0 <= wrong_content_prob <= 1:
            raise ConfigError(f"prior.wrong_content_prob={wrong_content_prob} must lie in [0, 1]")
        bad = [m for m in wrong_content_modes if m not in WRONG_CONTENT_MODES]
        if bad or (wrong_content_prob > 0 and not wrong_content_modes):
            raise ConfigError(f"prior.wrong_content_modes={list(wrong_content_modes)}: choose from {WRONG_CONTENT_MODES}")
        self.seed = int(seed)
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.gain_std, self.exposure_std, self.offset_std = float(gain_std), float(exposure_std), float(offset_std)
        self.elevation_error_deg, self.azimuth_error_deg = float(elevation_error_deg), float(azimuth_error_deg)
        self.radius_error = float(radius_error)
        self.wrong_content_prob = float(wrong_content_prob)
        self.wrong_content_modes = tuple(wrong_content_modes)
        self.offset_range_deg = (float(offset_range_deg[0]), float(offset_range_deg[1]))
        self.last_spoils: list[ViewSpoil] = []

    # ------------------------------------------------------------------ the spoiling
    def _call_generator(self) -> torch.Generator:
        """A generator for this call: the config seed mixed with one draw of the (per-step reseeded) global RNG."""
        draw = int(torch.randint(0, 2**31 - 1, (1,)).item())
        return torch.Generator().manual_seed(self.seed * 1_000_003 + draw)

    def _draw(self, g: torch.Generator, elevation: float, azimuth: float, radius: float) -> ViewSpoil:
        def normal(std: float) -> float:
            return float(torch.randn((), generator=g)) * std

        def uniform(lo: float, hi: float) -> float:
            return lo + (hi - lo) * float(torch.rand((), generator=g))

        wrong = None
        if self.wrong_content_prob > 0 and float(torch.rand((), generator=g)) < self.wrong_content_prob:
            wrong = self.wrong_content_modes[int(torch.randint(len(self.wrong_content_modes), (1,), generator=g))]
        elevation += normal(self.elevation_error_deg)
        azimuth += normal(self.azimuth_error_deg)
        radius = max(0.1, radius + normal(self.radius_error))
        if wrong == "janus" and abs(_wrap_deg(azimuth)) <= 90.0:
            wrong = "mirror"
        if wrong == "mirror":
            azimuth = -azimuth
        elif wrong == "offset":
            sign = 1.0 if float(torch.rand((), generator=g)) < 0.5 else -1.0
            azimuth += sign * uniform(*self.offset_range_deg)
        exposure = math.exp(normal(self.exposure_std))
        gain = tuple(exposure * (1.0 + normal(self.gain_std)) for _ in range(3))
        return ViewSpoil(elevation_deg=float(max(-89.0, min(89.0, elevation))), azimuth_deg=_wrap_deg(azimuth),
                         radius=radius, blur_sigma=uniform(*self.blur_sigma), gain=gain,  # type: ignore[arg-type]
                         offset=normal(self.offset_std), wrong_content=wrong)

    def _render_spoiled(self, spoil: ViewSpoil) -> Tensor:
        if spoil.wrong_content == "janus":  # the opposite view, mirrored: the front's texture on the back's outline
            image, alpha = self.render_absolute(-spoil.elevation_deg, _wrap_deg(spoil.azimuth_deg + 180.0),
                                                spoil.radius)
            image, alpha = image.flip(-1), alpha.flip(-1)
        else:
            image, alpha = self.render_absolute(spoil.elevation_deg, spoil.azimuth_deg, spoil.radius)
        return self._spoil_colours(image, alpha, spoil)

    def _spoil_colours(self, image: Tensor, alpha: Tensor, spoil: ViewSpoil) -> Tensor:
        """The colour cast, exposure, offset (object only) and blur of ``spoil`` applied to a view."""
        bg = torch.tensor(self.background, dtype=image.dtype, device=image.device).view(3, 1, 1)
        colour = image - (1.0 - alpha) * bg  # the object's premultiplied colour
        gain = torch.tensor(spoil.gain, dtype=image.dtype, device=image.device).view(3, 1, 1)
        image = (colour * gain + spoil.offset * alpha + (1.0 - alpha) * bg).clamp(0.0, 1.0)
        return gaussian_blur(image, spoil.blur_sigma)

    @torch.no_grad()
    def render_views(self, d_elev: Tensor, d_azim: Tensor, d_radius: Tensor) -> Tensor:
        """Spoiled renders (B,3,r,r) at the relative views; what was drawn is in ``last_spoils``."""
        if self.mesh is None or self.rasterizer is None:
            raise RuntimeError("OraclePrior.setup(device) must be called first")
        n = check_relative_views(d_elev, d_azim, d_radius)
        g = self._call_generator()
        self.last_spoils = [self._draw(g, self.ref_elevation + float(d_elev[i]), float(d_azim[i]),
                                       self.radius + float(d_radius[i])) for i in range(n)]
        return torch.stack([self._render_spoiled(s) for s in self.last_spoils])

    @torch.no_grad()
    def refine(self, images: Tensor, d_elev: Tensor, d_azim: Tensor, d_radius: Tensor, strength: float,
               steps: int = 50, geometry: Mesh | None = None) -> Tensor:
        """With ``geometry`` (aligned refine): per view, the wrong content of a spoiled view when one is drawn
        (Zero123 hallucinating), else the truth re-projected onto ``geometry`` with the drawn colour cast and blur
        (its pose error is not applied: a refine keeps the layout of the render it is given). Without geometry:
        the spoiled views, as ``sds`` and ``novel_views``."""
        if geometry is None or not self.accepts_geometry:
            return super().refine(images, d_elev, d_azim, d_radius, strength, steps)
        n = check_relative_views(d_elev, d_azim, d_radius, images.shape[0])
        g = self._call_generator()
        self.last_spoils, out = [], []
        for i in range(n):
            elevation, azimuth = self.ref_elevation + float(d_elev[i]), float(d_azim[i])
            radius = self.radius + float(d_radius[i])
            spoil = self._draw(g, elevation, azimuth, radius)
            self.last_spoils.append(spoil)
            if spoil.wrong_content is not None:
                out.append(self._render_spoiled(spoil))
            else:
                out.append(self._spoil_colours(*self.render_aligned(geometry, elevation, azimuth, radius), spoil))
        return self._blend(images, torch.stack(out), strength)

    def __repr__(self) -> str:
        return (f"NoisyOraclePrior(mesh={self.mesh_path}, resolution={self.resolution}, seed={self.seed}, "
                f"wrong_content_prob={self.wrong_content_prob})")
