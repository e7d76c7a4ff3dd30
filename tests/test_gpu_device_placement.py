"""Every tensor a training step creates must live on the stage's device, not on the default one.

On a CPU both are the CPU, so the bug class ("expected all tensors to be on the same device" on the first GPU
run) is invisible to ordinary tests. tests/helpers/device_audit.py records factory calls made from cg_lightning
code without an explicit device; here both stages run real training steps under it (stage 1: tiny Zero123 SDS,
reference losses, QA-Triplet with LPIPS, density control; stage 2: oracle refine, reference MSE) and must leave
no such call.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cg_lightning.cameras import orbit
from tests.helpers.device_audit import DeviceAudit


def audited(stage) -> DeviceAudit:
    """Wrap the stage's ``training_step`` so that it runs under a fresh audit."""
    audit = DeviceAudit()
    step = stage.training_step

    def training_step(*args, **kwargs):
        with audit:
            return step(*args, **kwargs)

    stage.training_step = training_step
    return audit


def test_audit_catches_a_factory_without_device():
    with DeviceAudit(allowed=set()) as audit:
        orbit(10.0, 20.0)
        torch.zeros(3)  # from this test file: not project code, not recorded
    assert any(site.startswith("cg_lightning/cameras.py:") for site in audit.sites), audit.sites
    assert all("test_gpu_device" not in site for site in audit.sites)
    with DeviceAudit() as audit:
        orbit(10.0, 20.0)
        torch.zeros(3, device="cpu")
    assert audit.sites == {}


def test_stage1_steps_create_tensors_on_the_stage_device(tmp_path):
    from cg_lightning.losses import QATripletLoss, SDSLoss
    from cg_lightning.perceptual.lpips import LPIPS
    from tests.test_stage1_stage import make_stage, make_trainer, reference_losses, tiny_prior

    losses = {
        **reference_losses(),
        "sds": SDSLoss(1.0),
        "qa_triplet": QATripletLoss(variant="official", lpips=LPIPS(net="vgg", pretrained=False)),
    }
    stage = make_stage(3, losses, prior=tiny_prior(), batch_size=2, num_points=100)
    audit = audited(stage)
    make_trainer(tmp_path, 3).fit(stage)  # density control runs at step 3
    assert audit.sites == {}, f"tensors created on the default device: {audit.sites}"


def test_stage2_steps_create_tensors_on_the_stage_device():
    from cg_lightning.data.reference import ReferenceImage
    from cg_lightning.mesh.mesh import Mesh
    from cg_lightning.render.mesh import TorchMeshRasterizer
    from tests.test_stage2_texture import BOX, RecordingOracle, grey_box, make_stage, make_trainer

    reference = ReferenceImage.from_rgba(np.asarray(Image.open(BOX / "box_rgba.png")), elevation=0.0)
    stage = make_stage(
        reference, RecordingOracle(), TorchMeshRasterizer(), grey_box(Mesh.load(BOX / "model.glb")), steps=2
    )
    audit = audited(stage)
    make_trainer(2).fit(stage)
    assert audit.sites == {}, f"tensors created on the default device: {audit.sites}"


@pytest.mark.parametrize("fn", ["zeros", "arange", "tensor"])
def test_audit_ignores_explicit_device_and_generators(fn):
    g = torch.Generator().manual_seed(0)
    with DeviceAudit(allowed=set()) as audit:
        getattr(torch, fn)(*([[1.0]] if fn == "tensor" else [3]), device="cpu")
        torch.rand(2, generator=g)
    assert audit.sites == {}
