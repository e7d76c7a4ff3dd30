"""Procedurally generated ground-truth objects (textured meshes + reference views) for the oracle prior.

See :mod:`cg_lightning.objects.procedural` (kept out of this ``__init__`` so ``python -m`` runs it cleanly).
"""
