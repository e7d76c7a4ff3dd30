"""3DGS .ply layout, exact round trip, atomic write, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from cg_lightning.errors import CGError
from cg_lightning.gaussians.model import GaussianModel
from cg_lightning.gaussians.ply import load_ply, ply_attribute_names, save_ply


def random_model(n: int, degree: int) -> GaussianModel:
    g = torch.Generator().manual_seed(degree)
    m = GaussianModel.random_ball(n, sh_degree=degree, generator=g)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return m


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_round_trip_is_exact(tmp_path, degree):
    m = random_model(37, degree)
    path = save_ply(tmp_path / "sub" / "point_cloud.ply", m)
    back = load_ply(path)
    assert back.sh_degree == degree and back.num_points == 37
    for name in GaussianModel.PARAM_NAMES:
        assert torch.equal(getattr(back, name), getattr(m, name)), name
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["point_cloud.ply"]  # no temp files left


def test_layout_readable_by_plyfile(tmp_path):
    m = random_model(5, 1)
    save_ply(tmp_path / "pc.ply", m)
    ply = PlyData.read(str(tmp_path / "pc.ply"))
    vertex = ply["vertex"]
    names = [p.name for p in vertex.properties]
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[9:18] == [f"f_rest_{i}" for i in range(9)]
    assert names[18:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert names == ply_attribute_names(1)
    assert all(vertex[n].dtype == np.float32 for n in names) and not ply.text
    # raw (pre-activation) values are stored: logit opacity, log scale; f_rest is channel-major
    np.testing.assert_array_equal(vertex["opacity"], m.opacity[:, 0].detach().numpy())
    np.testing.assert_array_equal(vertex["scale_2"], m.scaling[:, 2].detach().numpy())
    np.testing.assert_array_equal(vertex["f_dc_1"], m.features_dc[:, 0, 1].detach().numpy())
    np.testing.assert_array_equal(
        vertex["f_rest_3"], m.features_rest[:, 0, 1].detach().numpy()
    )  # green, 1st rest coef
    np.testing.assert_array_equal(
        vertex["f_rest_2"], m.features_rest[:, 2, 0].detach().numpy()
    )  # red, 3rd rest coef
    assert (vertex["nx"] == 0).all()


def test_load_errors(tmp_path):
    with pytest.raises(CGError, match="not found"):
        load_ply(tmp_path / "missing.ply")
    (tmp_path / "garbage.ply").write_bytes(b"not a ply at all")
    with pytest.raises(CGError):
        load_ply(tmp_path / "garbage.ply")
    mesh = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    PlyData([PlyElement.describe(mesh, "vertex")]).write(str(tmp_path / "mesh.ply"))
    with pytest.raises(CGError, match="not a 3DGS point cloud"):
        load_ply(tmp_path / "mesh.ply")
