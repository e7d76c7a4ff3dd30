"""Stage-1 data and schedules: step ratio, ramps, resolution schedules, the view sampler, the reference image."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from cg_lightning.data import ReferenceImage, ViewSampler, ViewStream
from cg_lightning.errors import ConfigError, InputImageError
from cg_lightning.schedules import Constant, LinearRamp, LogLinear, Piecewise, as_schedule, step_ratio


# ----------------------------------------------------------------------------------------------- schedules
def test_step_ratio_follows_dreamgaussian_counting():
    assert step_ratio(0, 500) == pytest.approx(1 / 500)
    assert step_ratio(249, 500) == pytest.approx(0.5)
    assert step_ratio(499, 500) == 1.0
    assert step_ratio(900, 500) == 1.0
    with pytest.raises(ConfigError):
        step_ratio(0, 0)


def test_linear_ramp_is_dreamgaussian_warmup():
    ramp = LinearRamp(0.0, 1e4)
    assert ramp(0, 500) == pytest.approx(20.0)
    assert ramp(249, 500) == pytest.approx(5000.0)
    assert ramp(499, 500) == pytest.approx(1e4)
    windowed = LinearRamp(start=1.0, end=3.0, begin=0.5, finish=0.75)
    assert windowed(0, 100) == 1.0 and windowed(62, 100) == pytest.approx(2.04)   # r = .63 -> t = .52
    assert windowed(99, 100) == 3.0
    with pytest.raises(ConfigError):
        LinearRamp(begin=0.5, finish=0.5)


def test_log_linear_and_piecewise_resolutions():
    lr = LogLinear(0.01, 2e-4)
    assert lr(249, 500) == pytest.approx(np.sqrt(0.01 * 2e-4))
    assert lr(499, 500) == pytest.approx(2e-4)
    dg = Piecewise([128, 256, 512], [0.3, 0.6])
    assert [dg(s, 500) for s in (0, 148, 149, 298, 299, 499)] == [128, 128, 256, 256, 512, 512]
    cg = Piecewise([512, 1024], [0.4])
    assert [cg(s, 500) for s in (198, 199)] == [512, 1024]
    with pytest.raises(ConfigError):
        Piecewise([1, 2], [0.5, 0.6])
    with pytest.raises(ConfigError):
        Piecewise([1, 2, 3], [0.6, 0.5])


def test_as_schedule():
    assert isinstance(as_schedule(3), Constant) and as_schedule(3)(0, 1) == 3.0
    ramp = LinearRamp()
    assert as_schedule(ramp) is ramp
    with pytest.raises(ConfigError):
        as_schedule(True)
    with pytest.raises(ConfigError):
        as_schedule("fast")


# --------------------------------------------------------------------------------------------- view sampler
def test_sampler_is_a_function_of_seed_and_step():
    s = ViewSampler(batch_size=2, seed=7)
    a, b = s.sample(13, 500), s.sample(13, 500)
    for field in ("elevation", "azimuth", "radius", "d_elev", "d_azim", "d_radius", "bg"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    others = [s.sample(k, 500) for k in range(14, 30)] + [ViewSampler(batch_size=2, seed=8).sample(13, 500)]
    assert any(not torch.equal(a.azimuth, o.azimuth) for o in others)
    assert not torch.equal(torch.stack([o.azimuth for o in others[:-1]]), a.azimuth.expand(16, 2))


def test_sampler_ranges_and_background():
    s = ViewSampler(batch_size=2, seed=0)
    batches = [s.sample(k, 500) for k in range(400)]
    ver = torch.cat([b.d_elev for b in batches])
    hor = torch.cat([b.d_azim for b in batches])
    assert ver.min() >= -30 and ver.max() <= 29 and torch.equal(ver, ver.round())
    assert hor.min() >= -180 and hor.max() <= 179 and torch.equal(hor, hor.round())
    assert ver.min() == -30 and ver.max() == 29 and hor.min() < -170 and hor.max() > 170  # range is covered
    assert torch.equal(torch.cat([b.radius for b in batches]), torch.full((800,), 2.0))
    assert float(torch.cat([b.d_radius for b in batches]).abs().max()) == 0.0
    bg = torch.cat([b.bg for b in batches])
    assert set(bg.unique().tolist()) == {0.0, 1.0} and torch.equal(bg[:, 0:1].expand(-1, 3), bg)
    assert 0.4 < float(bg[:, 0].mean()) < 0.6
    assert [batches[k].resolution for k in (0, 149, 299)] == [128, 256, 512]
    assert all(b.size == 2 for b in batches)


@pytest.mark.parametrize("elev, lo, hi", [(0.0, -30, 30), (-60.0, -20, 90), (60.0, -90, 20), (-10.5, -30, 41)])
def test_elevation_range_is_clamped_like_dreamgaussian(elev, lo, hi):
    s = ViewSampler(seed=1)
    assert s.elevation_offset_range(elev) == (lo, hi)
    b = ViewSampler(batch_size=64, seed=3).sample(0, 10, reference_elevation=elev)
    assert torch.allclose(b.elevation, b.d_elev + elev)
    assert b.elevation.abs().max() <= 80.0 + 0.5


def test_sampler_resolution_schedule_and_errors():
    s = ViewSampler(resolution=Piecewise([512, 1024], [0.4]))
    assert s.sample(0, 10).resolution == 512 and s.sample(3, 10).resolution == 1024
    assert ViewSampler(resolution=64).sample(0, 10).resolution == 64
    with pytest.raises(ConfigError):
        ViewSampler(batch_size=0)
    with pytest.raises(ConfigError):
        ViewSampler(invert_bg_prob=1.5)


def test_view_stream_resumes_at_the_requested_step():
    s = ViewSampler(batch_size=2, seed=5)
    full = list(itertools.islice(iter(ViewStream(s, 20, 0.0, start_step=lambda: 0)), 10))
    resumed = list(itertools.islice(iter(ViewStream(s, 20, 0.0, start_step=lambda: 6)), 4))
    assert [b.step for b in resumed] == [6, 7, 8, 9]
    for a, b in zip(full[6:], resumed, strict=True):
        assert torch.equal(a.azimuth, b.azimuth) and torch.equal(a.elevation, b.elevation)
        assert torch.equal(a.bg, b.bg) and a.resolution == b.resolution


def test_view_batch_cameras():
    pytest.importorskip("cg_lightning.cameras")
    b = ViewSampler(batch_size=2, resolution=32, seed=2).sample(0, 10, reference_elevation=-20.0)
    cams = b.cameras(fovy_deg=49.1)
    assert len(cams) == 2 and cams[0].width == 32 and cams[0].height == 32
    for cam, e, a in zip(cams, b.elevation.tolist(), b.azimuth.tolist(), strict=True):
        er, ar = np.radians(e), np.radians(a)
        expected = 2.0 * np.array([np.cos(er) * np.sin(ar), -np.sin(er), np.cos(er) * np.cos(ar)])
        assert np.allclose(cam.c2w[:3, 3].numpy(), expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------- reference
def test_reference_composites_on_white_then_resizes():
    img = np.zeros((4, 4, 4), np.uint8)
    img[..., 0] = 255
    img[..., 3] = 128
    img[:2, :2, 3] = 0
    ref = ReferenceImage.from_rgba(img, elevation=-30)
    a = 128 / 255
    assert ref.elevation == -30.0 and (ref.height, ref.width) == (4, 4)
    assert ref.rgb[:, 3, 3].tolist() == pytest.approx([1.0, 1 - a, 1 - a])
    assert ref.rgb[:, 0, 0].tolist() == pytest.approx([1.0, 1.0, 1.0])
    small = ref.rgb_at(2)
    assert small.shape == (1, 3, 2, 2)
    # exact 2x bilinear downsampling (align_corners=False) averages 2x2 blocks
    assert small[0, 1, 0, 0].item() == pytest.approx(1.0)
    assert small[0, 1, 1, 1].item() == pytest.approx(1 - a)
    assert ref.alpha_at(2)[0, 0].flatten().tolist() == pytest.approx([0.0, a, a, a])
    assert ref.rgb_at(8).shape == (1, 3, 8, 8) and ref.rgb_at((4, 4)).data_ptr() != 0
    assert ref.rgb_at(2) is small  # cached per size


def test_reference_accepts_float_and_rgb_and_rejects_bad_input():
    rgb = ReferenceImage.from_rgba(np.full((3, 5, 3), 0.25, np.float32))
    assert torch.equal(rgb.alpha, torch.ones(1, 3, 5)) and rgb.rgb.shape == (3, 3, 5)
    t = ReferenceImage.from_rgba(torch.ones(6, 6, 4))
    assert t.rgb.shape == (3, 6, 6)
    with pytest.raises(InputImageError):
        ReferenceImage.from_rgba(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(InputImageError):
        ReferenceImage.from_rgba(np.zeros((4, 4, 4), np.uint8))  # empty mask
    with pytest.raises(InputImageError):
        ReferenceImage.from_rgba(np.full((4, 4, 4), 2.0, np.float32))
    with pytest.raises(InputImageError):
        ReferenceImage.from_rgba(np.zeros((4, 4, 4), np.int32))
