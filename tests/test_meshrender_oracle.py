"""Oracle prior: true renders at the requested relative views, sds gradient direction, refine, Hydra config."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from cg_lightning.cameras import orbit
from cg_lightning.errors import ConfigError, InputImageError
from cg_lightning.mesh import Mesh
from cg_lightning.priors.base import Prior
from cg_lightning.priors.oracle import OraclePrior
from cg_lightning.render.mesh import TorchMeshRasterizer, render_mesh

TORUS = Path(__file__).resolve().parents[1] / "experiments" / "data" / "torus"
RES = 48


@pytest.fixture(scope="module")
def oracle() -> OraclePrior:
    p = OraclePrior(image=str(TORUS / "torus_rgba.png"), resolution=RES, rasterizer="torch")
    p.setup(torch.device("cpu"))
    p.set_reference(torch.ones(1, 3, RES, RES), elevation_deg=-15.0)
    return p


@functools.cache
def gt_mesh() -> Mesh:
    return Mesh.load(TORUS / "model.glb")


def truth(elev: float, azim: float, radius: float) -> torch.Tensor:
    mesh = gt_mesh()
    return render_mesh(mesh, orbit(elev, azim, radius, 49.1, RES, RES), TorchMeshRasterizer(), 1.0).image


def views(*rows: tuple[float, float, float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t = torch.tensor(rows, dtype=torch.float32)
    return t[:, 0], t[:, 1], t[:, 2]


def test_is_a_prior_and_refine_returns_truth_at_the_right_pose(oracle):
    assert isinstance(oracle, Prior) and oracle.mesh_path == TORUS / "model.glb"
    de, da, dr = views((0.0, 0.0, 0.0), (-20.0, 90.0, 0.3))
    images = torch.rand(2, 3, 2 * RES, 2 * RES)
    out = oracle.refine(images, de, da, dr, strength=0.8)
    assert out.shape == (2, 3, RES, RES)
    torch.testing.assert_close(out[0], truth(-15.0, 0.0, 2.0))          # reference elevation + d_elev
    torch.testing.assert_close(out[1], truth(-35.0, 90.0, 2.3))
    assert float((out[0] - out[1]).abs().mean()) > 0.01               # views differ
    torch.testing.assert_close(oracle.novel_views(de, da, dr), out)


def test_sds_gradient_pulls_images_to_truth(oracle):
    de, da, dr = views((10.0, -45.0, 0.0))
    target = truth(-5.0, -45.0, 2.0)[None]
    x = torch.rand(1, 3, RES, RES, requires_grad=True)
    out = oracle.sds(x, de, da, dr, step_ratio=0.5)
    assert out.timestep is None and out.loss.ndim == 0
    out.loss.backward()
    torch.testing.assert_close(x.grad, (x - target).detach())             # weight 1: grad = x - truth
    assert float(out.loss.detach()) == pytest.approx(0.5 * float(((x.detach() - target) ** 2).sum()), rel=1e-5)
    # images at another size are resized to the prior resolution; descending the loss approaches the truth
    y = torch.rand(1, 3, 2 * RES, 2 * RES, requires_grad=True)
    loss = oracle.sds(y, de, da, dr, None).loss
    loss.backward()
    with torch.no_grad():
        stepped = oracle.sds(y - 0.5 * y.grad, de, da, dr, None).loss
    assert float(stepped) < float(loss.detach())


def test_blended_refine_and_errors(tmp_path):
    p = OraclePrior(mesh_path=str(TORUS / "model.glb"), resolution=RES, rasterizer="torch", blend_strength=True)
    p.set_reference(torch.ones(1, 3, RES, RES), 0.0)  # sets up on the image's device
    de, da, dr = views((0.0, 30.0, 0.0))
    x = torch.zeros(1, 3, RES, RES)
    torch.testing.assert_close(p.refine(x, de, da, dr, strength=0.25), 0.75 * truth(0.0, 30.0, 2.0)[None])
    with pytest.raises(ConfigError):
        OraclePrior()
    with pytest.raises(InputImageError, match="ground-truth mesh"):
        OraclePrior(image=str(tmp_path / "img.png")).setup(torch.device("cpu"))
    with pytest.raises(ValueError):
        p.sds(torch.zeros(2, 3, RES, RES), de, da, dr, None)  # 2 images, 1 view


def test_hydra_config_instantiates_and_matches_constructor():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from cg_lightning.config.validate import check_targets

    root = Path(__file__).resolve().parents[1]
    cfg = OmegaConf.create({"image": str(TORUS / "torus_rgba.png"), "renderer": {"mesh": "torch"},
                            "prior": OmegaConf.load(root / "conf" / "prior" / "oracle.yaml")})
    check_targets(cfg)  # every key of the YAML is a constructor argument
    prior = instantiate(cfg.prior)
    assert isinstance(prior, OraclePrior) and prior.rasterizer_name == "torch" and prior.resolution == 256
    assert prior.background == (1.0, 1.0, 1.0)
    prior.setup(torch.device("cpu"))
    assert prior.mesh_path == TORUS / "model.glb"
