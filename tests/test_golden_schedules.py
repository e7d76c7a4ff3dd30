"""Golden: per-step schedules of the default CG configuration (tests/golden/schedules.npz), read from the composed
``+experiment=full`` config so that the experiment itself (not only the schedule classes) is checked.

Official steps are 1-based (``self.step += 1`` before use); ours are 0-based, so official step s is our s - 1.
Everything is exact except the stage-2 strength (float64 rounding of ``0.8 + 0.15 r``, 1.1e-16).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from cg_lightning.gaussians.optim import LogLinearSchedule
from cg_lightning.priors.base import sds_timestep
from cg_lightning.render.mesh.render import ssaa_size
from cg_lightning.schedules import step_ratio

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def fx():
    return dict(np.load(GOLDEN / "schedules.npz"))


@pytest.fixture()
def full(compose, example_image):
    return compose(["+experiment=full", f"image={example_image}"])


def test_stage1_schedules(fx, full):
    s1 = full.stage1
    steps = int(s1.steps)
    assert steps == len(fx["s1_step"]) == 500
    ours = fx["s1_step"] - 1
    np.testing.assert_array_equal([step_ratio(int(s), steps) for s in ours], fx["s1_step_ratio"])
    xyz = LogLinearSchedule(float(s1.lrs.xyz), float(s1.xyz_lr_final), int(s1.xyz_lr_steps))
    np.testing.assert_array_equal([xyz(int(s) + 1) for s in ours], fx["s1_xyz_lr"])
    for k, name in (("f_dc", "features_dc"), ("f_rest", "features_rest"), ("opacity", "opacity"),
                    ("scaling", "scaling"), ("rotation", "rotation")):
        assert np.all(fx[f"s1_lr_{k}"] == float(s1.lrs[name])), name
    rgb_w = instantiate(full.loss.reference_rgb.weight)
    mask_w = instantiate(full.loss.reference_alpha.weight)
    np.testing.assert_allclose([rgb_w(int(s), steps) for s in ours], fx["s1_ref_rgb_weight"], rtol=1e-15)
    np.testing.assert_allclose([mask_w(int(s), steps) for s in ours], fx["s1_ref_mask_weight"], rtol=1e-15)
    res = instantiate(s1.views.resolution)
    np.testing.assert_array_equal([int(res(int(s), steps)) for s in ours], fx["s1_render_resolution"])
    t = np.array([sds_timestep(step_ratio(int(s), steps)) for s in ours])
    np.testing.assert_array_equal(t, fx["s1_sds_t"])
    np.testing.assert_array_equal((1 - torch.from_numpy(fx["alphas_cumprod"])[t]).numpy(), fx["s1_sds_w"])
    d = s1.density
    official = fx["s1_step"]
    window = (official >= d.densify_from) & (official <= d.densify_until)
    np.testing.assert_array_equal(window, fx["s1_accumulate_stats"])
    np.testing.assert_array_equal(window & (official % d.interval == 0), fx["s1_densify_and_prune"])
    np.testing.assert_array_equal(window & (official % d.opacity_reset_interval == 0), fx["s1_reset_opacity"])


def test_dreamgaussian_render_resolution(fx, compose, example_image):
    dg = compose(["+experiment=dreamgaussian", f"image={example_image}"])
    res = instantiate(dg.stage1.views.resolution)
    np.testing.assert_array_equal([int(res(int(s) - 1, 500)) for s in fx["s1_step"]], fx["dg_render_resolution"])


def test_stage2_schedules(fx, full):
    s2 = full.stage2
    steps = int(s2.steps)
    assert steps == len(fx["s2_step"]) == 50
    ours = fx["s2_step"] - 1
    np.testing.assert_array_equal([step_ratio(int(s), steps) for s in ours], fx["s2_step_ratio"])
    strength = instantiate(s2.strength)
    got = np.array([strength(int(s), steps) for s in ours])
    np.testing.assert_allclose(got, fx["s2_strength"], atol=2e-16, rtol=0)
    init = np.array([int(int(s2.refine_steps) * g) for g in got])
    np.testing.assert_array_equal(init, fx["s2_init_step"])
    np.testing.assert_array_equal(int(s2.refine_steps) - init, fx["s2_num_ddim_steps"])
    # the DDIM timesteps actually run by refine (and hence s2_t_start) are checked in test_golden_zero123.py
    lo, hi = float(s2.ssaa_min), float(s2.ssaa_max)
    ssaa = np.array([min(hi, max(lo, 2 * u)) for u in fx["ssaa_u"]])
    np.testing.assert_array_equal(ssaa, fx["ssaa"])
    np.testing.assert_array_equal([ssaa_size(1024, float(s)) for s in ssaa], fx["ssaa_h_for_1024"])


def test_novel_view_elevation_ranges(fx, full):
    sampler = instantiate(full.stage1.views)
    for e, lo, hi in zip(fx["ver_range_elevation"], fx["ver_range_min"], fx["ver_range_max_exclusive"], strict=True):
        assert sampler.elevation_offset_range(float(e)) == (int(lo), int(hi))
