"""Stage-1 losses: QA-Triplet cases pinned with hand-computed numbers, reference and SDS terms, loss configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from cg_lightning.data.views import ViewBatch
from cg_lightning.errors import ConfigError
from cg_lightning.losses import (
    LossContext,
    QATripletLoss,
    ReferenceAlphaLoss,
    ReferenceRGBLoss,
    SDSLoss,
    as_loss_terms,
)
from cg_lightning.losses.qa_triplet import (
    CASE_MIXED,
    CASE_NEG_ONLY,
    CASE_POS_ONLY,
    feature_distance,
    pixel_l2,
    qa_triplet,
    quantity_weight,
    split_by_score,
)
from cg_lightning.schedules import Constant, LinearRamp

LOG2_3 = math.log2(3.0)  # 1.5849625007...


# --------------------------------------------------------------------------------------------- pure functions
def test_quantity_weight_is_log2_one_plus_count():
    assert quantity_weight(0) == 0.0
    assert quantity_weight(1) == 1.0
    assert quantity_weight(2) == pytest.approx(1.5849625007)
    assert quantity_weight(3) == 2.0


def test_split_threshold_is_strict_for_positives():
    pos, neg = split_by_score(torch.tensor([0.1, 0.3, 0.5, 0.29999]), 0.3)
    assert pos.tolist() == [0, 3]
    assert neg.tolist() == [1, 2]


def test_case_no_positives_pushes_negatives():
    # w_n = log2(3); mean(2500 - w*100, 2500 - w*200) = 2500 - 150 w = 2262.2556...
    loss, case = qa_triplet(torch.empty(0), torch.tensor([100.0, 200.0]), 2500.0, 0.2, 1450.0)
    assert case == CASE_NEG_ONLY
    assert loss.item() == pytest.approx(2500 - 150 * LOG2_3, rel=1e-6)
    assert loss.item() == pytest.approx(2262.25562, rel=1e-6)
    # the hinge clips the far negative: mean(2500 - 1000 w, 0) = 457.518...
    loss, _ = qa_triplet(torch.empty(0), torch.tensor([1000.0, 2000.0]), 2500.0, 0.2, 1450.0)
    assert loss.item() == pytest.approx((2500 - 1000 * LOG2_3) / 2, rel=1e-6)
    assert loss.item() == pytest.approx(457.51875, rel=1e-6)


def test_case_no_negatives_pulls_positives():
    # mean(w*3 + 0.2, w*5 + 0.2) = 4 w + 0.2 = 6.5398500...
    loss, case = qa_triplet(torch.tensor([3.0, 5.0]), torch.empty(0), 2500.0, 0.2, 1450.0)
    assert case == CASE_POS_ONLY
    assert loss.item() == pytest.approx(6.53985, rel=1e-6)


def test_case_both_means_over_all_pairs():
    # (1,1): w_p = w_n = 1 -> 100 - 300 + 1450 = 1250
    loss, case = qa_triplet(torch.tensor([100.0]), torch.tensor([300.0]), 2500.0, 0.2, 1450.0)
    assert case == CASE_MIXED
    assert loss.item() == pytest.approx(1250.0)
    # (2,1): w_p = log2 3, w_n = 1; pairs 10w - 1500 + 1450 < 0 -> 0 and 40w - 50 = 13.3985 -> mean 6.69925
    loss, _ = qa_triplet(torch.tensor([10.0, 40.0], dtype=torch.float64), torch.tensor([1500.0], dtype=torch.float64),
                         2500.0, 0.2, 1450.0)
    assert loss.item() == pytest.approx((40 * LOG2_3 - 50) / 2, rel=1e-6)
    assert loss.item() == pytest.approx(6.699250, rel=1e-6)
    # (1,2): w_p = 1, w_n = log2 3, margin 10: mean(15 - 2w, 15 - 4w) = 15 - 3w = 10.2451125
    loss, _ = qa_triplet(torch.tensor([5.0]), torch.tensor([2.0, 4.0]), 2500.0, 0.2, 10.0)
    assert loss.item() == pytest.approx(10.2451125, rel=1e-6)


def test_qa_triplet_rejects_empty_input():
    with pytest.raises(ValueError):
        qa_triplet(torch.empty(0), torch.empty(0), 1.0, 1.0, 1.0)


def test_pixel_l2_is_frobenius_norm_with_finite_grad_at_zero():
    anchor = torch.zeros(1, 3, 2, 2)
    samples = torch.stack([torch.ones(3, 2, 2), torch.zeros(3, 2, 2)])
    samples[1, 0, 0, 0] = 0.5
    assert pixel_l2(anchor, samples).tolist() == pytest.approx([math.sqrt(12.0), 0.5])
    x = torch.zeros(1, 3, 2, 2, requires_grad=True)
    pixel_l2(anchor, x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_feature_distance_on_unit_channel_vectors():
    white = [torch.ones(1, 3, 2, 2)]
    red = torch.zeros(2, 3, 2, 2)
    red[:, 0] = 1.0
    red[1] = 0.25  # grey: same direction as white -> distance ~ 0
    d = feature_distance(white, [red])
    # |(1,0,0) - (1,1,1)/sqrt3|^2 = (1 - 1/sqrt3)^2 + 2/3 = 0.8452995; sqrt / 2 = 0.4597008
    assert d[0].item() == pytest.approx(math.sqrt((1 - 1 / math.sqrt(3)) ** 2 + 2 / 3) / 2, rel=1e-5)
    assert d[1].item() == pytest.approx(0.0, abs=1e-5)


# ------------------------------------------------------------------------------------------------ fakes
class FakeLPIPS:
    """Score = mean |x - y| per sample (no network), with a 'features' backbone = the image itself."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Size, torch.Size]] = []

    def __call__(self, x, y):
        self.calls.append((x.shape, y.shape))
        return (x - y).abs().flatten(1).mean(1)

    def features(self, x):
        return [x]


class FakePrior:
    def __init__(self, refined=None):
        self.refined = refined
        self.sds_args = None
        self.refine_args = None

    def sds(self, images, d_elev, d_azim, d_radius, step_ratio):
        from cg_lightning.priors.base import SDSOutput

        self.sds_args = (images.shape, d_elev.tolist(), d_azim.tolist(), d_radius.tolist(), step_ratio)
        return SDSOutput(loss=(images ** 2).sum(), timestep=737)

    def refine(self, images, d_elev, d_azim, d_radius, strength, steps=50):
        self.refine_args = (images.requires_grad, d_elev.tolist(), strength, steps)
        return self.refined.clone()


def _views(b: int, res: int) -> ViewBatch:
    z = torch.zeros(b)
    return ViewBatch(step=0, elevation=z, azimuth=torch.arange(b, dtype=torch.float32) * 10, radius=z + 2,
                     d_elev=z - 5, d_azim=torch.arange(b, dtype=torch.float32) * 10, d_radius=z,
                     bg=torch.ones(b, 3), resolution=res)


def _ctx(novel, step=0, total=10, ref_size=4, prior=None, ref_value=1.0, render_value=0.5) -> LossContext:
    ref = torch.full((1, 3, ref_size, ref_size), ref_value)
    return LossContext(step=step, total_steps=total, ref_rgb=ref, ref_alpha=torch.ones(1, 1, ref_size, ref_size),
                       ref_render=torch.full((1, 3, ref_size, ref_size), render_value),
                       ref_alpha_render=torch.full((1, 1, ref_size, ref_size), 0.8), novel_images=novel,
                       views=_views(novel.shape[0], novel.shape[-1]), prior=prior)


# ------------------------------------------------------------------------------------------------ terms
def test_official_variant_end_to_end_with_fake_lpips():
    novel = torch.stack([torch.full((3, 2, 2), 0.9), torch.full((3, 2, 2), 0.2)]).requires_grad_(True)
    fake = FakeLPIPS()
    term = QATripletLoss(weight=LinearRamp(0.0, 2.0), variant="official", lpips=fake)
    out = term(_ctx(novel, step=4, total=10))
    # samples upsampled 2->4 px (constant images stay constant): scores 0.1 (positive), 0.8 (negative)
    assert fake.calls[0] == (torch.Size([2, 3, 4, 4]), torch.Size([2, 3, 4, 4]))
    d_pos, d_neg = math.sqrt(48 * 0.01), math.sqrt(48 * 0.64)
    assert out.raw.item() == pytest.approx(d_pos - d_neg + 1450.0, rel=1e-6)  # 1445.15026
    assert out.weight == pytest.approx(1.0)  # r = 5/10 -> 0.5 * 2
    assert out.weighted.item() == pytest.approx(out.raw.item())
    assert out.logs["num_pos"] == 1 and out.logs["num_neg"] == 1 and out.logs["case"] == CASE_MIXED
    assert out.logs["margin"] == 1450.0
    assert out.logs["lpips_0"] == pytest.approx(0.1, abs=1e-6) and out.logs["lpips_1"] == pytest.approx(0.8, abs=1e-6)
    out.raw.backward()
    # gradient descent moves the positive towards the white anchor and the negative away from it
    assert (novel.grad[0] < 0).all() and (novel.grad[1] > 0).all()


def test_official_variant_one_sided_cases_and_fixed_margins():
    fake = FakeLPIPS()
    term = QATripletLoss(variant="official", lpips=fake)
    both_pos = torch.full((2, 3, 4, 4), 0.95)
    out = term(_ctx(both_pos))
    d = math.sqrt(48 * 0.0025)
    assert out.logs["case"] == CASE_POS_ONLY and out.logs["num_pos"] == 2
    assert out.raw.item() == pytest.approx(LOG2_3 * d + 0.2, rel=1e-6)
    both_neg = torch.zeros(2, 3, 4, 4)
    out = term(_ctx(both_neg))
    assert out.logs["case"] == CASE_NEG_ONLY and out.logs["num_neg"] == 2
    assert out.raw.item() == pytest.approx(2500 - LOG2_3 * math.sqrt(48.0), rel=1e-6)


def test_paper_variant_uses_refined_samples_with_straight_through_gradient():
    refined = torch.zeros(2, 3, 2, 2)
    refined[0] = 0.9            # grey: LPIPS 0.1 -> positive, feature distance ~0
    refined[1, 0] = 1.0         # red: LPIPS 2/3 -> negative, feature distance 0.4597
    prior = FakePrior(refined)
    novel = torch.full((2, 3, 2, 2), 0.5, requires_grad=True)
    term = QATripletLoss(variant="paper", lpips=FakeLPIPS(), margin_mixed=1.0, margin_neg_only=5.0,
                         margin_pos_only=0.0, refine_strength=0.7, refine_steps=20)
    out = term(_ctx(novel, prior=prior))
    assert prior.refine_args == (False, [-5.0, -5.0], 0.7, 20)  # the prior saw detached renders and the offsets
    assert out.logs["case"] == CASE_MIXED
    d_neg = math.sqrt((1 - 1 / math.sqrt(3)) ** 2 + 2 / 3) / 2
    assert out.raw.item() == pytest.approx(1.0 - d_neg, abs=1e-5)  # 0.5402992
    out.raw.backward()
    assert novel.grad is not None and novel.grad.abs().sum() > 0


def test_paper_variant_margin_schedule_and_missing_prior():
    refined = torch.zeros(1, 3, 2, 2)
    refined[0, 0] = 1.0
    term = QATripletLoss(variant="paper", lpips=FakeLPIPS(), margin_neg_only=LinearRamp(1.0, 2.0))
    novel = torch.full((1, 3, 2, 2), 0.5, requires_grad=True)
    out = term(_ctx(novel, step=9, total=10, prior=FakePrior(refined)))   # r = 1 -> margin 2
    d = math.sqrt((1 - 1 / math.sqrt(3)) ** 2 + 2 / 3) / 2
    assert out.logs["margin"] == 2.0
    assert out.raw.item() == pytest.approx(2.0 - d, abs=1e-5)
    with pytest.raises(ConfigError):
        term(_ctx(novel, prior=None))


def test_qa_triplet_config_errors():
    with pytest.raises(ConfigError):
        QATripletLoss(variant="nope")


def test_real_lpips_class_in_both_variants():
    lpips_mod = pytest.importorskip("cg_lightning.perceptual.lpips")
    torch.manual_seed(0)
    model = lpips_mod.LPIPS(net="vgg", normalize=False, pretrained=False)
    novel = torch.rand(2, 3, 32, 32, requires_grad=True)
    term = QATripletLoss(variant="official", lpips=model)
    term.setup(torch.device("cpu"))
    out = term(_ctx(novel, ref_size=64))
    assert out.logs["num_pos"] + out.logs["num_neg"] == 2
    assert torch.isfinite(out.raw)
    out.raw.backward()
    assert novel.grad.abs().sum() > 0
    paper = QATripletLoss(variant="paper", lpips=model, compare_size=32)
    out = paper(_ctx(novel.detach().requires_grad_(True), ref_size=64, prior=FakePrior(torch.rand(2, 3, 32, 32))))
    assert torch.isfinite(out.raw) and 0.0 <= out.logs["dist_mean"] <= 1.0


def test_reference_losses_are_mse_with_ramped_weight():
    novel = torch.zeros(1, 3, 4, 4)
    rgb = ReferenceRGBLoss(weight=LinearRamp(0.0, 1e4))(_ctx(novel, step=4, total=10))
    assert rgb.raw.item() == pytest.approx(0.25)           # (0.5 - 1)^2
    assert rgb.weight == pytest.approx(5000.0)
    assert rgb.weighted.item() == pytest.approx(1250.0)
    alpha = ReferenceAlphaLoss(weight=LinearRamp(0.0, 1e3))(_ctx(novel, step=9, total=10))
    assert alpha.raw.item() == pytest.approx(0.04)         # (0.8 - 1)^2
    assert alpha.weighted.item() == pytest.approx(40.0)


def test_sds_term_forwards_views_and_logs_timestep():
    prior = FakePrior()
    novel = torch.full((2, 3, 4, 4), 0.5, requires_grad=True)
    out = SDSLoss(weight=1.0)(_ctx(novel, step=1, total=4, prior=prior))
    assert prior.sds_args == (torch.Size([2, 3, 4, 4]), [-5.0, -5.0], [0.0, 10.0], [0.0, 0.0], 0.5)
    assert out.logs["timestep"] == 737.0
    assert out.raw.item() == pytest.approx(24.0)  # 96 pixels * 0.25


def test_zero_weight_skips_evaluation():
    class Boom(ReferenceRGBLoss):
        def forward(self, ctx, logs):
            raise AssertionError("must not be evaluated")

    out = Boom(weight=Constant(0.0))(_ctx(torch.zeros(1, 3, 4, 4)))
    assert out.raw is None and out.weighted is None and out.weight == 0.0


def test_as_loss_terms_drops_null_and_rejects_non_terms():
    terms = as_loss_terms({"a": ReferenceRGBLoss(), "b": None})
    assert list(terms) == ["a"]
    with pytest.raises(ConfigError):
        as_loss_terms({"a": {"weight": 1}})


CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.mark.parametrize("name", ["dreamgaussian", "contrastive", "contrastive_paper"])
def test_loss_configs_instantiate(name):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(config_name=f"loss/{name}", overrides=["+perceptual_pretrained=false"])
    terms = as_loss_terms(instantiate(cfg.loss))
    assert {"reference_rgb", "reference_alpha", "sds"} <= set(terms)
    assert terms["reference_rgb"].weight(499, 500) == pytest.approx(1e4)
    assert terms["reference_alpha"].weight(249, 500) == pytest.approx(500.0)
    if name == "dreamgaussian":
        assert "qa_triplet" not in terms
    else:
        qa = terms["qa_triplet"]
        assert qa.variant == ("official" if name == "contrastive" else "paper")
        assert qa.threshold == 0.3
        if name == "contrastive":
            assert qa.margins(0, 500) == (2500.0, 0.2, 1450.0) and qa.lpips_normalize is False
        else:
            assert qa.margins(0, 500)[2] == pytest.approx(0.41 + 0.41 / 500) and qa.lpips_normalize is True
        assert qa.lpips_pretrained is False


@pytest.mark.parametrize("threshold", [-0.1, 1.5])
def test_qa_triplet_rejects_threshold_outside_unit_interval(threshold):
    from cg_lightning.errors import ConfigError
    from cg_lightning.losses import QATripletLoss

    with pytest.raises(ConfigError, match="threshold"):
        QATripletLoss(threshold=threshold)
