"""Adam-state surgery (pure functions) and DreamGaussian's clone / split / prune density control."""

from __future__ import annotations

import math

import pytest
import torch

from cg_lightning.cameras import orbit
from cg_lightning.gaussians.density import DensityController
from cg_lightning.gaussians.model import GaussianModel, inverse_sigmoid
from cg_lightning.gaussians.optim import build_optimizer, get_group
from cg_lightning.gaussians.surgery import (
    cat_state,
    cat_to_optimizer,
    mask_state,
    prune_optimizer,
    replace_in_optimizer,
    reset_state,
)
from cg_lightning.render.gaussian.base import GaussianRenderOutput
from cg_lightning.render.gaussian.torch_backend import TorchGaussianRasterizer

LRS = {"xyz": 0.01, "features_dc": 0.01, "opacity": 0.05, "scaling": 0.005, "rotation": 0.005}


def stepped(model: GaussianModel) -> torch.optim.Adam:
    """An Adam with non-trivial moments for every parameter."""
    opt = build_optimizer(model, LRS)
    saved = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    with torch.no_grad():  # keep the crafted values, only the moments matter
        for p, v in zip(model.parameters(), saved, strict=True):
            p.copy_(v)
    return opt


def state_of(opt, name):
    return opt.state[get_group(opt, name)["params"][0]]


# ---------------------------------------------------------------------------- pure state functions
def test_cat_mask_reset_state_are_pure():
    state = {
        "step": torch.tensor(3.0),
        "exp_avg": torch.arange(6.0).reshape(3, 2),
        "exp_avg_sq": torch.ones(3, 2),
    }
    grown = cat_state(state, extra_rows=2, rows=3)
    assert grown["exp_avg"].shape == (5, 2) and (grown["exp_avg"][3:] == 0).all()
    torch.testing.assert_close(grown["exp_avg"][:3], state["exp_avg"])
    assert grown["step"] is state["step"] and state["exp_avg"].shape == (3, 2)
    kept = mask_state(state, torch.tensor([True, False, True]))
    torch.testing.assert_close(kept["exp_avg"], torch.tensor([[0.0, 1.0], [4.0, 5.0]]))
    zero = reset_state(state, rows=3)
    assert (zero["exp_avg"] == 0).all() and (zero["exp_avg_sq"] == 0).all() and zero["step"] is state["step"]
    assert (state["exp_avg_sq"] == 1).all()


# ---------------------------------------------------------------------------- optimizer-level surgery
def test_cat_to_optimizer_keeps_old_moments_and_zeroes_new_ones():
    m = GaussianModel.random_ball(6, generator=torch.Generator().manual_seed(0))
    opt = stepped(m)
    old_avg = state_of(opt, "xyz")["exp_avg"].clone()
    old_grad = m.xyz.grad.clone()
    ext = {k: v.detach()[:2] * 0 + 1 for k, v in m.named_tensors().items()}
    m.replace_(cat_to_optimizer(opt, m.named_tensors(), ext))
    assert m.num_points == 8
    assert get_group(opt, "xyz")["params"][0] is m.xyz
    st = state_of(opt, "xyz")
    torch.testing.assert_close(st["exp_avg"][:6], old_avg)
    assert (st["exp_avg"][6:] == 0).all() and (st["exp_avg_sq"][6:] == 0).all()
    torch.testing.assert_close(m.xyz.grad[:6], old_grad)
    assert (m.xyz.grad[6:] == 0).all()
    assert len(opt.state) == len(GaussianModel.PARAM_NAMES)  # no stale entries for the old tensors
    opt.step()  # still a working optimizer


def test_prune_and_replace_in_optimizer():
    m = GaussianModel.random_ball(5, generator=torch.Generator().manual_seed(1))
    opt = stepped(m)
    keep = torch.tensor([True, False, True, True, False])
    before = state_of(opt, "opacity")["exp_avg_sq"].clone()
    xyz = m.xyz.detach().clone()
    m.replace_(prune_optimizer(opt, m.named_tensors(), keep))
    assert m.num_points == 3
    torch.testing.assert_close(m.xyz, xyz[keep])
    torch.testing.assert_close(state_of(opt, "opacity")["exp_avg_sq"], before[keep])
    step_before = state_of(opt, "opacity")["step"].clone()
    m.replace_(replace_in_optimizer(opt, m.named_tensors(), "opacity", torch.full((3, 1), -2.0)))
    assert (m.opacity == -2.0).all()
    st = state_of(opt, "opacity")
    assert (st["exp_avg"] == 0).all() and (st["exp_avg_sq"] == 0).all() and st["step"] == step_before
    with pytest.raises(ValueError):
        prune_optimizer(opt, m.named_tensors(), torch.ones(4, dtype=torch.bool))
    other = GaussianModel.random_ball(3, generator=torch.Generator().manual_seed(2))
    with pytest.raises(ValueError):  # tensors that are not in this optimizer
        prune_optimizer(opt, other.named_tensors(), torch.ones(3, dtype=torch.bool))


def test_surgery_without_optimizer():
    m = GaussianModel.random_ball(4, generator=torch.Generator().manual_seed(0))
    new = prune_optimizer(None, m.named_tensors(), torch.tensor([True, True, False, True]))
    assert new["xyz"].shape == (3, 3) and new["xyz"].requires_grad


# ---------------------------------------------------------------------------- density control
def crafted_model() -> GaussianModel:
    """Four Gaussians: small, large, transparent, huge (rows 0..3)."""
    xyz = torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.0, 0.0], [0.0, 0.2, 0.0], [0.0, 0.0, 0.2]])
    scales = torch.tensor([0.02, 0.1, 0.02, 0.5])
    opac = torch.tensor([0.5, 0.5, 0.005, 0.5])
    rot = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(4, 1)
    return GaussianModel(
        xyz,
        torch.zeros(4, 1, 3),
        torch.zeros(4, 0, 3),
        inverse_sigmoid(opac)[:, None],
        torch.log(scales)[:, None].repeat(1, 3),
        rot,
    )


def fake_render(model: GaussianModel, grad_norms: torch.Tensor, radii: torch.Tensor) -> GaussianRenderOutput:
    means2d = torch.zeros(model.num_points, 2, requires_grad=True)
    means2d.grad = torch.stack([grad_norms * 0.6, grad_norms * 0.8], dim=1)  # |grad| = grad_norms
    return GaussianRenderOutput(
        image=torch.zeros(3, 4, 4),
        alpha=torch.zeros(1, 4, 4),
        depth=torch.zeros(1, 4, 4),
        radii=radii.to(torch.int32),
        means2d=means2d,
    )


def test_accumulate_counts_only_visible_gaussians():
    m = crafted_model()
    dc = DensityController()
    out = fake_render(m, torch.tensor([0.02, 0.03, 0.04, 0.05]), torch.tensor([3, 0, 5, 2]))
    dc.accumulate(out)
    dc.accumulate(fake_render(m, torch.tensor([0.0, 0.03, 0.02, 0.05]), torch.tensor([4, 1, 1, 0])))
    torch.testing.assert_close(dc.grad_accum, torch.tensor([0.02, 0.03, 0.06, 0.05]))
    torch.testing.assert_close(dc.denom, torch.tensor([2.0, 1.0, 2.0, 1.0]))
    torch.testing.assert_close(dc.max_radii2d, torch.tensor([4.0, 1.0, 5.0, 2.0]))
    torch.testing.assert_close(dc.mean_grads(), torch.tensor([0.01, 0.03, 0.03, 0.05]))


def test_clone_split_prune_follow_dreamgaussian_rules():
    m = crafted_model()
    opt = stepped(m)
    dc = DensityController(generator=torch.Generator().manual_seed(0))
    # all four above the 0.01 threshold
    dc.accumulate(fake_render(m, torch.full((4,), 0.02), torch.ones(4)))
    parent_xyz, parent_scale = m.xyz[1].detach().clone(), m.scales[1].detach().clone()
    stats = dc.densify_and_prune(m, opt)
    # small ones (0 and the transparent 2) are cloned; large (1) and huge (3) split; then transparent (2 and
    # its clone) pruned and the huge one's children (0.5 / 1.6 = 0.3125 < 0.4) survive.
    assert stats == {"cloned": 2, "split": 2, "pruned": 2}
    assert m.num_points == 4 - 2 + 2 + 2 * 2 - 2
    scales = sorted(round(s, 4) for s in m.scales.max(dim=1).values.tolist())
    assert scales == [0.02, 0.02, 0.0625, 0.0625, 0.3125, 0.3125]
    children = (m.scales.max(dim=1).values - parent_scale.max() / 1.6).abs() < 1e-6
    assert int(children.sum()) == 2
    assert ((m.xyz[children] - parent_xyz).norm(dim=1) < 0.5).all()  # sampled around the parent
    assert not torch.allclose(m.xyz[children][0], m.xyz[children][1])
    assert (m.opacities > 0.01).all()
    # optimizer and statistics follow the new size; new rows start with zero moments
    for name, p in m.named_tensors().items():
        assert get_group(opt, name)["params"][0] is p
        assert state_of(opt, name)["exp_avg"].shape == p.shape
    assert dc.grad_accum.shape == (6,) and (dc.grad_accum == 0).all() and (dc.denom == 0).all()
    opt.zero_grad()
    m.xyz.grad = torch.ones_like(m.xyz)
    opt.step()


def test_max_points_densifies_the_highest_gradients_first():
    """``max_points`` (not in DG, CPU presets): candidates are taken by decreasing gradient while their clones
    (+1) and splits (+1 with split_n 2) fit under the cap; the rest wait for a later densification."""
    m = crafted_model()
    dc = DensityController(generator=torch.Generator().manual_seed(0), max_points=6)
    # grads: small 0.02, large 0.05, transparent 0.03, huge 0.04 -> order large (+1), huge (+1), transparent (+1)
    dc.accumulate(fake_render(m, torch.tensor([0.02, 0.05, 0.03, 0.04]), torch.ones(4)))
    stats = dc.densify_and_prune(m, stepped(m))
    assert stats["cloned"] == 0 and stats["split"] == 2  # the budget of 2 went to the two largest gradients
    assert m.num_points <= 6
    uncapped = crafted_model()
    free = DensityController(generator=torch.Generator().manual_seed(0))
    free.accumulate(fake_render(uncapped, torch.tensor([0.02, 0.05, 0.03, 0.04]), torch.ones(4)))
    assert free.densify_and_prune(uncapped, stepped(uncapped))["cloned"] == 2
    from cg_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match="max_points"):
        DensityController(max_points=0)


def test_pruning_of_world_scale_and_final_prune():
    m = crafted_model()
    with torch.no_grad():
        m.scaling[3] = math.log(0.45)  # > 0.1 * extent 4
        m.scaling[1] = math.log(0.15)  # kept by densify_and_prune, removed by the final prune
    opt = stepped(m)
    dc = DensityController()
    dc.accumulate(fake_render(m, torch.zeros(4), torch.ones(4)))  # no densification, only pruning
    stats = dc.densify_and_prune(m, opt)
    assert stats == {"cloned": 0, "split": 0, "pruned": 2} and m.num_points == 2
    # final prune: opacity < 0.01 or max scale > 0.1 (extent 1); statistics were reset by the densification
    assert dc.final_prune(m, opt) == 1 and m.num_points == 1
    assert m.scales.max().item() == pytest.approx(0.02)


def test_final_prune_screen_size_term():
    """Official ``prune(0.01, 1, 1)``: a screen radius above 1 px since the last densification removes a Gaussian;
    ``max_screen_size=0`` switches both size terms off (3DGS ``if max_screen_size:``)."""
    m = crafted_model()
    opt = stepped(m)
    dc = DensityController()
    dc.accumulate(fake_render(m, torch.zeros(4), torch.tensor([1.0, 2.0, 0.0, 1.0])))
    keep_big = m.scales.max(dim=1).values <= 0.1
    expected = int((~keep_big | (m.opacities[:, 0] < 0.01) | (dc.max_radii2d > 1)).sum())
    assert float(dc.max_radii2d[1]) == 2.0 and expected >= 1
    assert expected == 3  # row 1 (scale exactly 0.1, kept by the world-scale term) goes by its 2-px radius
    assert dc.final_prune(m, opt) == expected
    m2 = crafted_model()
    dc2 = DensityController()
    dc2.accumulate(fake_render(m2, torch.zeros(4), torch.tensor([1.0, 2.0, 0.0, 1.0])))
    transparent = int((m2.opacities[:, 0] < 0.01).sum())
    assert dc2.final_prune(m2, None, max_screen_size=0) == transparent == 1


def test_schedule_and_opacity_reset():
    m = crafted_model()
    opt = stepped(m)
    dc = DensityController(densify_from=100, densify_until=3000, interval=100, opacity_reset_interval=700)
    out = fake_render(m, torch.full((4,), 0.001), torch.ones(4))
    stats = dc.after_backward(50, m, opt, out)
    assert dc.denom.numel() == 0 and stats["num_points"] == 4 and stats["cloned"] == 0
    stats = dc.after_backward(101, m, opt, out)
    assert dc.denom.tolist() == [1.0] * 4 and stats["pruned"] == 0
    stats = dc.after_backward(200, m, opt, out)
    assert stats["pruned"] == 2 and stats["num_points"] == 2  # transparent and huge (0.5 > 0.4)
    out = fake_render(m, torch.zeros(2), torch.ones(2))
    stats = dc.after_backward(700, m, opt, out)
    assert stats["opacity_reset"] == 1
    assert m.opacities.max().item() == pytest.approx(0.01, rel=1e-4)
    assert (state_of(opt, "opacity")["exp_avg"] == 0).all()
    with pytest.raises(ValueError):
        dc.after_backward(701, m, opt, fake_render(crafted_model(), torch.zeros(4), torch.ones(4)))


def test_density_buffers_are_in_checkpoints_and_resize_on_load():
    dc = DensityController()
    dc.resize_(5)
    dc.grad_accum += 2.0
    sd = dc.state_dict()
    assert set(sd) == {"grad_accum", "denom", "max_radii2d"}
    fresh = DensityController()
    fresh.load_state_dict(sd)
    torch.testing.assert_close(fresh.grad_accum, torch.full((5,), 2.0))


def test_densification_with_real_renders_end_to_end():
    """Render, backprop, step, densify, render again: shapes stay consistent and the grad is in NDC units."""
    m = GaussianModel.random_ball(300, generator=torch.Generator().manual_seed(0))
    opt = build_optimizer(m, LRS)
    dc = DensityController(grad_threshold=0.0, densify_from=1, interval=2)
    raster = TorchGaussianRasterizer()
    cam = orbit(0, 30, width=48, height=48)
    target = torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(1))
    sizes = []
    for step in (1, 2, 3):
        out = raster.render(m, cam, torch.ones(3))
        dc.before_backward(out)
        ((out.image - target) ** 2).mean().backward()
        assert out.means2d.grad is not None and out.means2d.grad.shape == (m.num_points, 2)
        opt.step()
        opt.zero_grad()
        dc.after_backward(step, m, opt, out)
        sizes.append(m.num_points)
    assert sizes[0] == 300 and sizes[1] > 300 and sizes[2] == sizes[1]
    out = raster.render(m, cam, torch.ones(3))
    assert out.radii.shape == (m.num_points,) and torch.isfinite(out.image).all()


@pytest.mark.parametrize("kwargs", [{"interval": 0}, {"opacity_reset_interval": 0}, {"split_n": 0},
                                    {"percent_dense": 1.5}, {"min_opacity": -0.1}, {"grad_threshold": -1.0}])
def test_density_controller_rejects_out_of_range_settings(kwargs):
    from cg_lightning.errors import ConfigError
    from cg_lightning.gaussians.density import DensityController

    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        DensityController(**kwargs)
