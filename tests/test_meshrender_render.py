"""render_mesh: a textured square at a known depth vs the analytic picture; maps, compositing, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from cg_lightning.cameras import orbit
from cg_lightning.errors import CGError
from cg_lightning.mesh import Mesh
from cg_lightning.render.mesh import TorchMeshRasterizer, render_mesh

HALF = 0.5  # the square spans [-HALF, HALF]^2 in the plane z = Z
Z = 0.25


def square_mesh(albedo: torch.Tensor | None = None) -> Mesh:
    v = torch.tensor([[-HALF, -HALF, Z], [HALF, -HALF, Z], [HALF, HALF, Z], [-HALF, HALF, Z]])
    vt = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])  # v = 0 (first texture row) at the top
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])
    return Mesh(v=v, f=f, vt=vt, albedo=albedo).auto_normals()


def two_tone(h: int = 8, w: int = 8) -> torch.Tensor:
    """Top half red, bottom half blue."""
    tex = torch.zeros(h, w, 3)
    tex[: h // 2, :, 0] = 1.0
    tex[h // 2:, :, 2] = 1.0
    return tex


@pytest.fixture(scope="module")
def rast() -> TorchMeshRasterizer:
    return TorchMeshRasterizer()


def test_square_at_known_depth(rast):
    size = 64
    out = render_mesh(square_mesh(two_tone()), orbit(0, 0, 2.0, width=size, height=size), rast, (0.0, 1.0, 0.0),
                      filter_mode="linear")
    assert out.image.shape == (3, size, size) and out.alpha.shape == (1, size, size)
    # projected half-width in pixels: HALF / (distance * tan(fovy/2)) * size/2
    half_px = HALF / ((2.0 - Z) * math.tan(math.radians(49.1) / 2)) * size / 2
    assert float(out.alpha.sum()) == pytest.approx((2 * half_px) ** 2, rel=0.01)
    covered = out.alpha[0] > 0.999
    torch.testing.assert_close(out.depth[0][covered], torch.full_like(out.depth[0][covered], 2.0 - Z))
    assert torch.all(out.depth[0][out.alpha[0] == 0] == 0)
    torch.testing.assert_close(out.normal[:, covered].T, torch.tensor([[0.0, 0.0, 1.0]]).expand(int(covered.sum()), 3))
    torch.testing.assert_close(out.viewcos[0][covered], torch.ones(int(covered.sum())))
    # texture orientation: red on the upper half of the image, blue on the lower; green background outside
    c = size // 2
    assert out.image[:, c - 8, c].tolist() == pytest.approx([1, 0, 0], abs=1e-5)
    assert out.image[:, c + 8, c].tolist() == pytest.approx([0, 0, 1], abs=1e-5)
    assert out.image[:, 1, 1].tolist() == [0.0, 1.0, 0.0]
    # an edge pixel is a coverage blend of the square colour and the background
    edge = out.alpha[0] < 0.999
    edge &= out.alpha[0] > 0.001
    assert edge.sum() > 0
    blend = out.image[1][edge]
    torch.testing.assert_close(blend, 1.0 - out.alpha[0][edge])  # the square has no green


def test_viewcos_and_side_view(rast):
    mesh = square_mesh(two_tone())
    out = render_mesh(mesh, orbit(0, 60, 2.0, width=48, height=48), rast, 1.0)
    covered = out.alpha[0] > 0.999
    torch.testing.assert_close(out.viewcos[0][covered], torch.full((int(covered.sum()),), 0.5), atol=1e-5, rtol=0)
    back = render_mesh(mesh, orbit(0, 180, 2.0, width=48, height=48), rast, 1.0)
    assert float(back.alpha.sum()) > 100  # double-sided like nvdiffrast, seen from behind
    assert float(back.viewcos[back.alpha > 0.999].max()) < -0.99


def test_albedo_override_gets_gradients_and_untextured_grey(rast):
    mesh = square_mesh(two_tone())
    cam = orbit(0, 0, 2.0, width=32, height=32)
    logits = torch.zeros(8, 8, 3, requires_grad=True)
    out = render_mesh(mesh, cam, rast, 1.0, albedo=torch.sigmoid(logits))
    (out.image * out.alpha).sum().backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0
    plain = render_mesh(Mesh(v=mesh.v, f=mesh.f), cam, rast, 1.0)
    covered = plain.alpha[0] > 0.999
    torch.testing.assert_close(plain.image[:, covered], torch.full((3, int(covered.sum())), 0.5))
    with pytest.raises(CGError, match="no UVs"):
        render_mesh(Mesh(v=mesh.v, f=mesh.f, albedo=two_tone()), cam, rast, 1.0)


def test_ssaa_keeps_output_size_and_agrees(rast):
    mesh = square_mesh(two_tone())
    cam = orbit(-10, 20, 2.0, width=40, height=40)
    a = render_mesh(mesh, cam, rast, 1.0)
    b = render_mesh(mesh, cam, rast, 1.0, ssaa=2.0)
    assert b.image.shape == a.image.shape == (3, 40, 40)
    assert float(b.alpha.sum()) == pytest.approx(float(a.alpha.sum()), rel=0.02)
    assert float((a.image - b.image).abs().mean()) < 0.02
