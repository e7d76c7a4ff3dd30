"""Seeds derived from ``(seed, name, ...)``, so each pipeline step and each training step starts from an RNG state
that does not depend on what ran before it in this process: a job resumed after a kill (stage 1 and the mesh
skipped, stage 2 restarted from ``last.ckpt``) draws exactly what the uninterrupted run drew."""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, *parts: object) -> int:
    """A well-mixed 32-bit seed for ``(seed, *parts)`` (Lightning's ``seed_everything`` takes 32 bits)."""
    text = "/".join([str(int(seed)), *(str(p) for p in parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def seed_all(seed: int, *parts: object) -> int:
    """Seed Python, NumPy and torch (all devices) from ``(seed, *parts)``; returns the derived seed."""
    from lightning.pytorch import seed_everything

    derived = derive_seed(seed, *parts)
    seed_everything(derived, workers=True, verbose=False)
    return derived
