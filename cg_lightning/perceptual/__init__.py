"""Perceptual networks: LPIPS (training split + metric) and CLIP image embeddings (evaluation)."""
