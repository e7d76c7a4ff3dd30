"""A random-weight CLIP image encoder for smoke runs and tests (``evaluation=smoke``).

It reuses the vision tower of the tiny Zero123 that ``prior=tiny`` already writes to the cache (same folder, same
seed), so a smoke run builds no extra model; the encoder then runs the real :class:`CLIPImageEncoder` code path
(uint8 round trip, CLIP preprocessing, projection, L2 normalisation). Its similarities are meaningless.
"""

from __future__ import annotations

from pathlib import Path

from cg_lightning.perceptual.clip import CLIPImageEncoder


class TinyCLIPImageEncoder(CLIPImageEncoder):
    """:class:`CLIPImageEncoder` on the tiny random CLIP vision model in ``<cache>/tiny_zero123_v*/image_encoder``."""

    def __init__(self, cache_dir: str | None = None, model_seed: int = 0) -> None:
        super().__init__(model="<tiny>", dtype="fp32", allow_download=False)
        self.cache_dir = cache_dir
        self.model_seed = int(model_seed)

    def _folder(self) -> Path:
        from cg_lightning.priors.tiny import ensure_tiny_zero123

        folder = ensure_tiny_zero123(self.cache_dir, self.model_seed) / "image_encoder"
        self.model = str(folder)
        return folder
