"""conf/mesh/*.yaml keys map onto the mesh functions' parameters, and the defaults agree with the code."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cg_lightning.mesh.bake import bake_texture
from cg_lightning.mesh.cleanup import clean_mesh
from cg_lightning.mesh.extract import extract_mesh
from cg_lightning.mesh.uv import unwrap_uv

CONF = Path(__file__).resolve().parents[1] / "conf" / "mesh"

# config key -> (function, parameter name)
KEYS = {
    "resolution": (extract_mesh, "resolution"),
    "num_blocks": (extract_mesh, "num_blocks"),
    "opacity_threshold": (extract_mesh, "opacity_threshold"),
    "iso": (extract_mesh, "iso"),
    "remesh": (clean_mesh, "remesh"),
    "remesh_size": (clean_mesh, "remesh_size"),
    "max_faces": (clean_mesh, "max_faces"),
    "cov_floor_voxels": (extract_mesh, "cov_floor_voxels"),
    "pad_grid": (extract_mesh, "pad_grid"),
    "cull_sigma": (extract_mesh, "cull_sigma"),
    "fill_cavities": (extract_mesh, "fill_cavities"),
    "uv_padding": (unwrap_uv, "padding"),
    "seam_normals": (unwrap_uv, "seam_normals"),
    "bake_min_resolution": (bake_texture, "min_resolution"),
    "bake_texel_mapping": (bake_texture, "texel_mapping"),
    "inpaint": (bake_texture, "inpaint"),
    "texture_size": (bake_texture, "texture_size"),
    "bake_render_size": (bake_texture, "render_size"),
    "view_cos_threshold": (bake_texture, "view_cos_threshold"),
    "inpaint_dilation": (bake_texture, "inpaint_dilation"),
    "bake_blend": (bake_texture, "blend"),
}


def test_default_config_matches_function_defaults():
    cfg = OmegaConf.load(CONF / "default.yaml")
    assert set(cfg.keys()) == set(KEYS)
    for key, (fn, param) in KEYS.items():
        default = inspect.signature(fn).parameters[param].default
        assert cfg[key] == default, f"mesh.{key}={cfg[key]!r} but {fn.__name__}({param}={default!r})"
    assert inspect.signature(unwrap_uv).parameters["texture_size"].default == cfg.texture_size
    assert cfg.texture_size > cfg.bake_min_resolution


@pytest.mark.parametrize("name", ["default", "smoke", "cpu"])
def test_composed_mesh_group(compose, example_image, name):
    cfg = compose([f"image={example_image}", f"mesh={name}"])
    assert set(cfg.mesh.keys()) == set(KEYS)
    assert cfg.mesh.resolution % cfg.mesh.num_blocks == 0


@pytest.mark.parametrize("override, match", [
    ("mesh.bake_blend=average", "bake_blend"),
    ("mesh.inpaint=disc", "inpaint"),
    ("mesh.seam_normals=mean", "seam_normals"),
    ("mesh.bake_texel_mapping=corner", "bake_texel_mapping"),
    ("mesh.bake_min_resolution=1024", "bake_min_resolution"),
    ("mesh.cov_floor_voxels=-0.1", "cov_floor_voxels"),
    ("mesh.cull_sigma=0", "cull_sigma"),
])
def test_bad_mesh_options_fail_before_any_work(compose, example_image, override, match):
    from cg_lightning.config.validate import check_ranges
    from cg_lightning.errors import ConfigError

    cfg = compose([f"image={example_image}", override])
    with pytest.raises(ConfigError, match=match):
        check_ranges(cfg)
