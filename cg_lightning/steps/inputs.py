"""Input step: read the image, remove the background + recentre, super-resolve. Results are cached in the job dir."""

from __future__ import annotations

import logging
import time

import numpy as np
from hydra.utils import instantiate
from PIL import Image

from cg_lightning.runtime.context import JobContext

log = logging.getLogger(__name__)


def read_png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGBA")).copy()


def prepare_reference(ctx: JobContext) -> np.ndarray:
    """The RGBA reference image (H,W,4 uint8) both stages fit, computed once per job."""
    cached = ctx.find_output("reference")
    if cached is not None:
        ctx.reference_rgba = read_png(cached)
        return ctx.reference_rgba
    from cg_lightning.preprocess.image_io import load_image, save_image

    t0 = time.perf_counter()
    image = load_image(ctx.cfg.image)
    preprocess = instantiate(ctx.cfg.preprocess)
    processed = preprocess(image)
    save_image(ctx.layout.preprocessed, processed)
    upscaler = instantiate(ctx.cfg.superres)
    upscaler.setup(ctx.device)
    reference = upscaler(processed)
    save_image(ctx.layout.reference, reference)
    seconds = time.perf_counter() - t0
    log.info("input: %s -> %s (%.1f s)", processed.shape[:2], reference.shape[:2], seconds)
    ctx.reference_rgba = reference
    ctx.loggers.log_input()
    return reference
