"""Golden: QA-Triplet (``official`` variant) against CG ``stage1.py`` ``train_step`` lines 204-312.

Fixture: tests/golden/qa_triplet.npz. The VGG LPIPS weights are not available offline, so the official run took its
LPIPS scores as inputs; they are injected here the same way. Same float32 operations (bilinear 48 -> 1024 resize,
Frobenius norm, the three hinge cases): loss and gradient must be bit-identical.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cg_lightning.data.views import ViewBatch
from cg_lightning.losses.base import LossContext
from cg_lightning.losses.qa_triplet import QATripletLoss

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def fx():
    return dict(np.load(GOLDEN / "qa_triplet.npz"))


@pytest.fixture(scope="module")
def anchor(fx):
    a = F.interpolate(torch.from_numpy(fx["anchor_src"]), (1024, 1024), mode="bilinear", align_corners=False)
    assert hashlib.sha256(a.numpy().tobytes()).hexdigest() == str(fx["anchor_sha256"])
    assert float(a.double().sum()) == float(fx["anchor_sum_f64"])
    return a


class RecordedLPIPS:
    """Returns the fixture's LPIPS scores for the batch (the official run injected them the same way)."""

    def __init__(self, scores: np.ndarray) -> None:
        self.scores = torch.from_numpy(scores).float()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert x.shape == y.shape and x.shape[-2:] == (1024, 1024)
        return self.scores.clone()


def context(anchor: torch.Tensor, renders: torch.Tensor) -> LossContext:
    b, res = renders.shape[0], renders.shape[-1]
    z = torch.zeros(b)
    views = ViewBatch(step=0, elevation=z, azimuth=z, radius=z + 2, d_elev=z, d_azim=z, d_radius=z,
                      bg=torch.ones(b, 3), resolution=res)
    return LossContext(step=0, total_steps=500, ref_rgb=anchor, ref_alpha=torch.ones(1, 1, 1024, 1024),
                       ref_render=anchor, ref_alpha_render=torch.ones(1, 1, 1024, 1024), novel_images=renders,
                       views=views)


def test_all_cases(fx, anchor):
    thr = float(fx["threshold"])
    m_neg, m_pos, m_mix = (float(m) for m in fx["margins_neg_only_pos_only_mixed"])
    assert len(fx["cases"]) == 7
    for case in fx["cases"]:
        case = str(case)
        renders = torch.from_numpy(fx["renders"][fx[f"{case}__idx"]]).clone().requires_grad_(True)
        term = QATripletLoss(variant="official", threshold=thr, margin_neg_only=m_neg, margin_pos_only=m_pos,
                             margin_mixed=m_mix, lpips=RecordedLPIPS(fx[f"{case}__scores"]))
        out = term(context(anchor, renders))
        n_pos, n_neg, _ = fx[f"{case}__Np_Nn_count"].tolist()
        assert (out.logs["num_pos"], out.logs["num_neg"]) == (n_pos, n_neg), case
        assert out.raw.item() == float(fx[f"{case}__loss"]), case
        out.raw.backward()
        np.testing.assert_array_equal(renders.grad.numpy(), fx[f"{case}__grad"], err_msg=case)
