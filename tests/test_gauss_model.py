"""GaussianModel parameters/activations/initialisation, optimizer groups and the position LR schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cg_lightning.errors import ConfigError
from cg_lightning.gaussians.model import GaussianModel, knn_mean_sq_dist, quat_to_rotmat
from cg_lightning.gaussians.optim import LogLinearSchedule, build_optimizer, get_group
from cg_lightning.gaussians.sh import SH_C0, eval_sh, sh_basis

LRS = {"xyz": 0.01, "features_dc": 0.01, "opacity": 0.05, "scaling": 0.005, "rotation": 0.005}


def test_random_ball_matches_dreamgaussian_init():
    m = GaussianModel.random_ball(2000, generator=torch.Generator().manual_seed(0))
    assert m.num_points == 2000 and m.sh_degree == 0
    assert tuple(n for n, _ in m.named_parameters()) == GaussianModel.PARAM_NAMES
    r = m.means.norm(dim=1)
    assert r.max() <= 0.5
    # uniform in volume: half the points lie within 0.5 * 0.5^(1/3)
    assert abs((r < 0.5 * 0.5 ** (1 / 3)).float().mean().item() - 0.5) < 0.05
    assert abs(m.means.mean(0)).max() < 0.03
    torch.testing.assert_close(m.opacities, torch.full((2000, 1), 0.1))
    torch.testing.assert_close(m.rotations, torch.tensor([[1.0, 0, 0, 0]]).expand(2000, 4))
    assert (m.features_dc >= 0).all() and (m.features_dc < 1 / 255).all()  # DG: dc == U[0,1)/255
    assert ((m.colors - 0.5).abs() < SH_C0 / 255 + 1e-7).all()
    assert m.features_rest.shape == (2000, 0, 3)
    # isotropic scale = sqrt(mean squared distance to the 3 nearest neighbours)
    pts = m.means.detach().double().numpy()
    d2 = ((pts[:20, None, :] - pts[None]) ** 2).sum(-1)
    d2[np.arange(20), np.arange(20)] = np.inf
    expect = np.sqrt(np.sort(d2, axis=1)[:, :3].mean(1))
    np.testing.assert_allclose(m.scales[:20].detach().numpy(), np.repeat(expect[:, None], 3, 1), rtol=1e-4)


def test_random_ball_is_reproducible_with_generator():
    a = GaussianModel.random_ball(100, generator=torch.Generator().manual_seed(3))
    b = GaussianModel.random_ball(100, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a.xyz, b.xyz)


def test_knn_brute_force_and_kdtree_agree_and_handle_duplicates():
    pts = torch.rand(500, 3, generator=torch.Generator().manual_seed(1))
    pts[1] = pts[0]  # a duplicate: distance 0 to its twin
    brute = knn_mean_sq_dist(pts, chunk=64)
    tree = knn_mean_sq_dist(pts, kdtree_above=10)
    torch.testing.assert_close(brute, tree, rtol=1e-5, atol=1e-9)
    d = torch.cdist(pts.double(), pts.double()) ** 2
    d.fill_diagonal_(float("inf"))
    torch.testing.assert_close(brute.double(), d.topk(3, largest=False).values.mean(1), rtol=1e-4, atol=1e-9)
    assert knn_mean_sq_dist(pts[:1]).shape == (1,)


def test_activations_and_covariance():
    g = torch.Generator().manual_seed(2)
    m = GaussianModel.random_ball(50, generator=g)
    with torch.no_grad():
        m.rotation.copy_(torch.randn(50, 4, generator=g) * 3)
        m.scaling.copy_(torch.randn(50, 3, generator=g))
        m.opacity.copy_(torch.randn(50, 1, generator=g))
    torch.testing.assert_close(m.rotations.norm(dim=1), torch.ones(50))
    torch.testing.assert_close(m.opacities, torch.sigmoid(m.opacity))
    torch.testing.assert_close(m.scales, torch.exp(m.scaling))
    rot = quat_to_rotmat(m.rotation)
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3).expand(50, 3, 3), atol=1e-5, rtol=0)
    cov = m.covariances()
    expect = rot @ torch.diag_embed(m.scales**2) @ rot.transpose(1, 2)
    torch.testing.assert_close(cov, expect, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(m.covariances(2.0), 4 * cov, atol=1e-6, rtol=1e-5)
    # quaternion convention w, x, y, z: 90 deg about z maps x to y
    q = torch.tensor([[math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)]])
    torch.testing.assert_close(
        quat_to_rotmat(q)[0] @ torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1, 0]), atol=1e-6, rtol=0
    )


def test_sh_degree_zero_colour_and_higher_degrees():
    dirs = torch.nn.functional.normalize(torch.randn(30, 3), dim=-1)
    assert sh_basis(3, dirs).shape == (30, 16)
    sh = torch.randn(30, 16, 3)
    torch.testing.assert_close(eval_sh(0, sh, dirs), SH_C0 * sh[:, 0])
    # the real SH basis is orthonormal on the sphere: check with a Monte-Carlo estimate
    big = torch.nn.functional.normalize(torch.randn(200_000, 3, dtype=torch.float64), dim=-1)
    basis = sh_basis(3, big)
    gram = basis.T @ basis * (4 * math.pi / big.shape[0])
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=0.03, rtol=0)
    m = GaussianModel.empty(4, sh_degree=2)
    assert m.features_rest.shape == (4, 8, 3) and m.sh.shape == (4, 9, 3)


def test_resize_and_load_state_dict_of_another_size():
    big = GaussianModel.random_ball(40, sh_degree=1, generator=torch.Generator().manual_seed(0))
    small = GaussianModel.empty(3, sh_degree=1)
    small.load_state_dict(big.state_dict())
    assert small.num_points == 40
    for name in GaussianModel.PARAM_NAMES:
        torch.testing.assert_close(getattr(small, name), getattr(big, name))
    small.resize_(7)
    assert all(t.shape[0] == 7 for t in small.named_tensors().values())
    with pytest.raises(ValueError):
        small.replace_({"xyz": torch.zeros(8, 3)})


def test_build_optimizer_groups_and_errors():
    m = GaussianModel.random_ball(10, generator=torch.Generator().manual_seed(0))
    opt = build_optimizer(m, LRS)
    assert [g["name"] for g in opt.param_groups] == list(GaussianModel.PARAM_NAMES)
    assert get_group(opt, "features_rest")["lr"] == pytest.approx(0.01 / 20)
    assert get_group(opt, "opacity")["params"][0] is m.opacity
    assert opt.defaults["eps"] == 1e-15
    with pytest.raises(ConfigError):
        build_optimizer(m, {**LRS, "colour": 1.0})
    with pytest.raises(ConfigError):
        build_optimizer(m, {"xyz": 0.01})


def test_log_linear_schedule():
    sched = LogLinearSchedule(0.01, 2e-4, 500)
    assert sched(0) == pytest.approx(0.01)
    assert sched(500) == pytest.approx(2e-4)
    assert sched(250) == pytest.approx(math.sqrt(0.01 * 2e-4))
    assert sched(10_000) == pytest.approx(2e-4)
    delayed = LogLinearSchedule(0.01, 2e-4, 500, delay_steps=100, delay_mult=0.01)
    assert delayed(0) == pytest.approx(0.01 * 0.01)
    assert delayed(100) == pytest.approx(sched(100))
    with pytest.raises(ConfigError):
        LogLinearSchedule(0.01, 1e-3, 0)
