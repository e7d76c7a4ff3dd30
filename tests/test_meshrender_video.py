"""Turntable cameras and the atomic mp4 writer (imageio-ffmpeg), read back frame by frame."""

from __future__ import annotations

import imageio_ffmpeg
import numpy as np
import pytest
import torch

from cg_lightning.io.video import turntable_cameras, write_mp4


def read_frames(path) -> tuple[tuple[int, int], list[np.ndarray]]:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    return (w, h), [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]


def test_write_mp4_roundtrip(tmp_path):
    frames = [np.full((48, 64, 3), (i * 25, 255 - i * 25, 128), np.uint8) for i in range(10)]
    path = write_mp4(iter(frames), tmp_path / "turn.mp4", fps=10)
    assert [p.name for p in tmp_path.iterdir()] == ["turn.mp4"]  # atomic: no temp file left
    size, back = read_frames(path)
    assert size == (64, 48) and len(back) == 10
    for a, b in zip(frames, back, strict=True):  # flat colours survive H.264 almost exactly
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 4


def test_write_mp4_pads_odd_sizes_and_rejects_bad_input(tmp_path):
    size, back = read_frames(write_mp4([np.zeros((31, 33, 3), np.uint8)] * 3, tmp_path / "odd.mp4"))
    assert size == (34, 32) and len(back) == 3
    with pytest.raises(ValueError, match="no frames"):
        write_mp4([], tmp_path / "empty.mp4")
    with pytest.raises(ValueError, match="uint8"):
        write_mp4([np.zeros((8, 8, 3), np.float32)], tmp_path / "float.mp4")
    with pytest.raises(ValueError, match="same size"):
        write_mp4([np.zeros((8, 8, 3), np.uint8), np.zeros((10, 8, 3), np.uint8)], tmp_path / "mixed.mp4")
    assert not (tmp_path / "mixed.mp4").exists() and not (tmp_path / "empty.mp4").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.mp4"]


def test_turntable_cameras():
    cams = turntable_cameras(8, elevation_deg=-30.0, radius=2.5, size=64)
    assert len(cams) == 8 and all(c.width == c.height == 64 for c in cams)
    pos = torch.stack([c.position for c in cams])
    torch.testing.assert_close(pos.norm(dim=-1), torch.full((8,), 2.5))
    torch.testing.assert_close(pos[:, 1], torch.full((8,), 2.5 * 0.5), atol=1e-5, rtol=0)  # elevation -30: above
    torch.testing.assert_close(pos[0], torch.tensor([0.0, 1.25, 2.5 * 3**0.5 / 2]), atol=1e-5, rtol=0)  # front
    torch.testing.assert_close(pos[2], torch.tensor([2.5 * 3**0.5 / 2, 1.25, 0.0]), atol=1e-5, rtol=0)  # az 90: +x
