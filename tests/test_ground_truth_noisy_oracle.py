"""The imperfect oracle: seeded per-view blur / colour / pose errors / wrong content, used by sds, refine, novel_views."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cg_lightning.errors import ConfigError
from cg_lightning.priors.noisy_oracle import NoisyOraclePrior, gaussian_blur
from cg_lightning.priors.oracle import OraclePrior

ROOT = Path(__file__).resolve().parents[1]
TORUS = ROOT / "experiments" / "data" / "torus"
RES = 48
OFF = dict(blur_sigma=(0.0, 0.0), gain_std=0.0, exposure_std=0.0, offset_std=0.0, elevation_error_deg=0.0,
           azimuth_error_deg=0.0, radius_error=0.0, wrong_content_prob=0.0)


def make(**kwargs) -> NoisyOraclePrior:
    p = NoisyOraclePrior(image=str(TORUS / "torus_rgba.png"), resolution=RES, rasterizer="torch",
                         **{**OFF, **kwargs})
    p.setup(torch.device("cpu"))
    p.set_reference(torch.ones(1, 3, RES, RES), elevation_deg=-10.0)
    return p


def views(*rows):
    t = torch.tensor(rows, dtype=torch.float32)
    return t[:, 0], t[:, 1], t[:, 2]


@pytest.fixture(scope="module")
def perfect() -> OraclePrior:
    p = OraclePrior(image=str(TORUS / "torus_rgba.png"), resolution=RES, rasterizer="torch")
    p.setup(torch.device("cpu"))
    p.set_reference(torch.ones(1, 3, RES, RES), elevation_deg=-10.0)
    return p


def test_without_noise_it_is_the_perfect_oracle(perfect):
    de, da, dr = views((0.0, 30.0, 0.0), (10.0, 200.0, 0.2))
    torch.testing.assert_close(make().novel_views(de, da, dr), perfect.novel_views(de, da, dr))


def test_seeded_per_call_and_per_view():
    noisy = dict(blur_sigma=(0.5, 1.5), gain_std=0.1, azimuth_error_deg=5.0, wrong_content_prob=0.5)
    p, q, other = make(seed=0, **noisy), make(seed=0, **noisy), make(seed=1, **noisy)
    de, da, dr = views((0.0, 30.0, 0.0), (0.0, 30.0, 0.0))
    torch.manual_seed(7)
    a = p.novel_views(de, da, dr)
    torch.manual_seed(7)
    b = q.novel_views(de, da, dr)
    torch.testing.assert_close(a, b)  # same seed, same step state -> same views (a resumed run repeats them)
    assert p.last_spoils[0] != p.last_spoils[1]  # per view: the two identical requests get different errors
    torch.manual_seed(7)
    assert not torch.allclose(other.novel_views(de, da, dr), a)  # another seed: other errors
    c = p.novel_views(de, da, dr)  # next call (global RNG advanced): other errors
    assert not torch.allclose(c, a)


def test_each_inconsistency(perfect):
    de, da, dr = views((0.0, 40.0, 0.0))
    truth = perfect.novel_views(de, da, dr)
    # blur: same mean colour, less detail
    blurred = make(blur_sigma=(2.0, 2.0)).novel_views(de, da, dr)
    assert abs(float(blurred.mean() - truth.mean())) < 0.01
    grad = lambda x: (x[..., 1:] - x[..., :-1]).abs().mean()  # noqa: E731
    assert float(grad(blurred)) < 0.8 * float(grad(truth))
    # colour shift: the object changes, the white background stays white
    shifted = make(gain_std=0.2, offset_std=0.05, seed=3).novel_views(de, da, dr)
    background = (truth == 1.0).all(1, keepdim=True).expand_as(truth)
    assert torch.equal(shifted[background], truth[background])
    assert float((shifted - truth)[~background].abs().mean()) > 0.01
    # pose error: the view is rendered from a nearby camera
    p = make(elevation_error_deg=3.0, azimuth_error_deg=5.0, radius_error=0.03, seed=4)
    posed = p.novel_views(de, da, dr)
    s = p.last_spoils[0]
    assert (s.elevation_deg, s.azimuth_deg, s.radius) != (-10.0, 40.0, 2.0)
    torch.testing.assert_close(posed[0], perfect.render_absolute(s.elevation_deg, s.azimuth_deg, s.radius)[0])


def test_wrong_content_modes(perfect):
    de, da, dr = views((0.0, 40.0, 0.0))
    mirrored = make(wrong_content_prob=1.0, wrong_content_modes=["mirror"])
    torch.testing.assert_close(mirrored.novel_views(de, da, dr), perfect.novel_views(*views((0.0, -40.0, 0.0))))
    offset = make(wrong_content_prob=1.0, wrong_content_modes=["offset"], offset_range_deg=(60.0, 60.0))
    offset.novel_views(de, da, dr)
    assert offset.last_spoils[0].azimuth_deg in (pytest.approx(100.0), pytest.approx(-20.0))
    janus = make(wrong_content_prob=1.0, wrong_content_modes=["janus"])
    back = views((0.0, 170.0, 0.0))  # absolute elevation -10, azimuth 170: the opposite view is (10, -10)
    expected = perfect.render_absolute(10.0, -10.0, 2.0)[0].flip(-1)
    torch.testing.assert_close(janus.novel_views(*back)[0], expected)
    assert janus.last_spoils[0].wrong_content == "janus"
    janus.novel_views(de, da, dr)  # a front view cannot show its front on the back: falls back to mirror
    assert janus.last_spoils[0].wrong_content == "mirror"


def test_sds_and_refine_use_the_spoiled_views():
    p = make(blur_sigma=(1.0, 1.0), gain_std=0.1, seed=2)
    de, da, dr = views((0.0, 60.0, 0.0))
    torch.manual_seed(1)
    target = p.novel_views(de, da, dr)
    x = torch.rand(1, 3, RES, RES, requires_grad=True)
    torch.manual_seed(1)
    p.sds(x, de, da, dr, 0.5).loss.backward()
    torch.testing.assert_close(x.grad, (x - target).detach())
    torch.manual_seed(1)
    torch.testing.assert_close(p.refine(x.detach(), de, da, dr, strength=0.8), target)


def test_blur_is_normalised_and_config_errors():
    img = torch.rand(3, 20, 20)
    assert torch.equal(gaussian_blur(img, 0.0), img)
    torch.testing.assert_close(gaussian_blur(torch.full((3, 9, 9), 0.3), 2.0), torch.full((3, 9, 9), 0.3))
    for bad in [dict(blur_sigma=(2.0, 1.0)), dict(gain_std=-1.0), dict(wrong_content_prob=1.5),
                dict(wrong_content_modes=["upside_down"]), dict(offset_range_deg=(10.0, 270.0))]:
        with pytest.raises(ConfigError):
            NoisyOraclePrior(image=str(TORUS / "torus_rgba.png"), **bad)


def test_hydra_config_instantiates():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from cg_lightning.config.validate import check_targets

    noisy = OmegaConf.load(ROOT / "conf" / "prior" / "oracle_noisy.yaml")
    assert list(noisy.defaults) == ["oracle", "_self_"]
    del noisy["defaults"]
    cfg = OmegaConf.merge({"image": str(TORUS / "torus_rgba.png"), "renderer": {"mesh": "torch"}, "seed": 3},
                          {"prior": OmegaConf.load(ROOT / "conf" / "prior" / "oracle.yaml")}, {"prior": noisy})
    check_targets(cfg)  # every key is a constructor argument
    prior = instantiate(cfg.prior)
    assert isinstance(prior, NoisyOraclePrior) and prior.seed == 3 and prior.wrong_content_prob == 0.15
    assert prior.ground_truth_path() == TORUS / "model.glb"
