"""Golden: adaptive density control against DG ``gs_renderer.py`` ``GaussianModel`` (tests/golden/density_control.npz).

Same Adam step, densify-and-prune (clone, split, prune with optimizer surgery), final prune, opacity reset and
statistics accumulation, from the fixture's state. The split's random offsets cannot be reproduced by seeding (the
official ``torch.normal(0, std)`` draw order is not ours), so the recorded standard normals ``dp_split_z`` are
injected through ``DensityController.split_noise``. Tolerances: parameters and Adam moments after the surgery
3e-7 (float32 rounding of the rotation matrices built for the split offsets, differently rounded normalisation);
everything else exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cg_lightning.gaussians.density import DensityController
from cg_lightning.gaussians.model import GaussianModel
from cg_lightning.gaussians.optim import build_optimizer, get_group

GOLDEN = Path(__file__).parent / "golden"
OURS = {"xyz": "xyz", "f_dc": "features_dc", "f_rest": "features_rest", "opacity": "opacity", "scaling": "scaling",
        "rotation": "rotation"}


@pytest.fixture(scope="module")
def fx():
    return dict(np.load(GOLDEN / "density_control.npz"))


def t(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def model_from(fx, prefix: str) -> GaussianModel:
    return GaussianModel(*(t(fx[f"{prefix}_{k}"]).clone() for k in OURS))


def official_lrs(fx) -> dict[str, float]:
    return {OURS[str(n)]: float(lr) for n, lr in zip(fx["lr_names"], fx["lr"], strict=True)}


def state_from(fx, prefix: str = "in") -> tuple[GaussianModel, torch.optim.Adam, DensityController]:
    """The fixture's ``in_*`` state: parameters, Adam moments and step, densification statistics."""
    model = model_from(fx, prefix)
    opt = build_optimizer(model, official_lrs(fx))
    for k, name in OURS.items():
        p = get_group(opt, name)["params"][0]
        opt.state[p] = {"step": torch.tensor(float(fx[f"{prefix}_adam_{k}_step"])),
                        "exp_avg": t(fx[f"{prefix}_adam_{k}_exp_avg"]).clone(),
                        "exp_avg_sq": t(fx[f"{prefix}_adam_{k}_exp_avg_sq"]).clone()}
    dc = DensityController(grad_threshold=float(fx["max_grad"]), percent_dense=float(fx["percent_dense"]),
                           extent=float(fx["extent"]), min_opacity=float(fx["min_opacity"]))
    dc.resize_(model.num_points)
    dc.grad_accum = t(fx[f"{prefix}_xyz_gradient_accum"])[:, 0].clone()
    dc.denom = t(fx[f"{prefix}_denom"])[:, 0].clone()
    dc.max_radii2d = t(fx[f"{prefix}_max_radii2D"]).clone()
    return model, opt, dc


def assert_state(fx, prefix: str, model: GaussianModel, opt, dc: DensityController | None, atol: float) -> None:
    for k, name in OURS.items():
        p = getattr(model, name)
        np.testing.assert_allclose(p.detach().numpy(), fx[f"{prefix}_{k}"], atol=atol, rtol=0, err_msg=name)
        state = opt.state[get_group(opt, name)["params"][0]]
        for moment in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_allclose(state[moment].numpy(), fx[f"{prefix}_adam_{k}_{moment}"], atol=atol, rtol=0,
                                       err_msg=f"{name} {moment}")
        assert float(state["step"]) == float(fx[f"{prefix}_adam_{k}_step"])
    if dc is not None:
        np.testing.assert_array_equal(dc.grad_accum.numpy(), fx[f"{prefix}_xyz_gradient_accum"][:, 0])
        np.testing.assert_array_equal(dc.denom.numpy(), fx[f"{prefix}_denom"][:, 0])
        np.testing.assert_array_equal(dc.max_radii2d.numpy(), fx[f"{prefix}_max_radii2D"])


def test_adam_step_reproduces_input_state(fx):
    model = model_from(fx, "init")
    opt = build_optimizer(model, official_lrs(fx))
    for k, name in OURS.items():
        if k != "f_rest":
            getattr(model, name).grad = t(fx[f"adam_grads_{k}"]).clone()
    opt.step()
    for k, name in OURS.items():
        np.testing.assert_array_equal(getattr(model, name).detach().numpy(), fx[f"in_{k}"], err_msg=name)


def test_densify_and_prune(fx):
    model, opt, dc = state_from(fx)
    np.testing.assert_array_equal(dc.mean_grads().numpy(), fx["dp_mean_grads"][:, 0])
    z = t(fx["dp_split_z"])
    dc.split_noise = lambda scales: z.clone()  # the official draws (see module docstring)
    stats = dc.densify_and_prune(model, opt)
    assert stats == {"cloned": int(fx["dp_clone_mask"].sum()), "split": len(z) // 2, "pruned": 9}
    assert model.num_points == 252
    assert_state(fx, "dp_out", model, opt, dc, atol=3e-7)


@pytest.mark.parametrize("tag, survivors", [("prune_e1_s1", 4), ("prune_e4_s20", 93), ("prune_e1_s1_zero_radii", 87)])
def test_final_prune(fx, tag, survivors):
    model, opt, dc = state_from(fx)
    min_opacity, extent, max_screen_size = (float(x) for x in fx[f"{tag}_args"])
    if tag.endswith("zero_radii"):
        dc.max_radii2d.zero_()
    dc.final_prune(model, opt, min_opacity=min_opacity, max_scale=0.1 * extent, max_screen_size=max_screen_size)
    assert model.num_points == survivors
    assert_state(fx, f"{tag}_out", model, opt, dc, atol=0.0)


def test_reset_opacity(fx):
    model, opt, dc = state_from(fx)
    dc.reset_opacity(model, opt)
    np.testing.assert_array_equal(model.opacity.detach().numpy(), fx["reset_out_opacity"])
    state = opt.state[get_group(opt, "opacity")["params"][0]]
    np.testing.assert_array_equal(state["exp_avg"].numpy(), fx["reset_out_adam_opacity_exp_avg"])
    np.testing.assert_array_equal(state["exp_avg_sq"].numpy(), fx["reset_out_adam_opacity_exp_avg_sq"])
    assert float(state["step"]) == float(fx["reset_out_adam_opacity_step"])


def test_densification_statistics(fx):
    from cg_lightning.render.gaussian.base import GaussianRenderOutput

    n = int(fx["N"])
    dc = DensityController()
    for call in (0, 1):
        means2d = torch.zeros(n, 3, requires_grad=True)
        means2d.grad = t(fx[f"stats_call{call}_viewspace_grad"]).clone()
        radii = t(fx[f"stats_call{call}_visibility"]).to(torch.int32)
        dc.accumulate(GaussianRenderOutput(image=torch.zeros(3, 2, 2), alpha=torch.zeros(1, 2, 2),
                                           depth=torch.zeros(1, 2, 2), radii=radii, means2d=means2d))
    np.testing.assert_array_equal(dc.grad_accum.numpy(), fx["stats_out_xyz_gradient_accum"][:, 0])
    np.testing.assert_array_equal(dc.denom.numpy(), fx["stats_out_denom"][:, 0])
