"""conf/stage2/*.yaml build a TextureStage the way the pipeline does (instantiate with ``_recursive_=False``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cg_lightning.data.reference import ReferenceImage
from cg_lightning.mesh.mesh import Mesh
from cg_lightning.stages.texture_stage import TextureStage

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_stage2(tmp_path: Path, choice: str, overrides: list[str] | None = None):
    """Compose only the stage2 group (plus the root ``seed`` it interpolates) from the real conf/ directory."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    primary = tmp_path / "primary"
    primary.mkdir(exist_ok=True)
    (primary / "root.yaml").write_text(f"defaults:\n  - stage2: {choice}\n  - _self_\nseed: 7\n"
                                       f"hydra:\n  searchpath:\n    - file://{CONF}\n")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(primary), version_base="1.3"):
            return compose(config_name="root", overrides=list(overrides or []))
    finally:
        GlobalHydra.instance().clear()


def tiny_inputs() -> dict:
    v = torch.tensor([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.0, 0.5, 0.0]])
    mesh = Mesh(v=v, f=torch.tensor([[0, 1, 2]]), vt=torch.tensor([[0.1, 0.9], [0.9, 0.9], [0.5, 0.1]]))
    reference = ReferenceImage.from_rgba(torch.ones(16, 16, 4), elevation=-10.0)
    return {"mesh": mesh, "reference": reference, "prior": None, "rasterizer": None}


@pytest.mark.parametrize("choice,ref_size,batch,res", [("default", 1024, 2, 1024), ("contrastive", 1024, 2, 1024),
                                                       ("dreamgaussian", 256, 1, 512), ("smoke", 64, 1, 64)])
def test_stage2_configs_instantiate_with_the_anchor_values(tmp_path, choice, ref_size, batch, res):
    from hydra.utils import instantiate

    cfg = compose_stage2(tmp_path, choice)
    inputs = tiny_inputs()
    inputs["prior"] = prior = object()
    stage = instantiate(cfg.stage2, **inputs, _recursive_=False)
    assert isinstance(stage, TextureStage)
    # Hydra turns dataclass kwargs into DictConfigs; the stage gets its Mesh / ReferenceImage back
    assert isinstance(stage.reference, ReferenceImage) and stage.reference.elevation == -10.0
    assert stage.prior is prior and torch.equal(stage.v, inputs["mesh"].v)
    assert stage.ref_size == ref_size and stage.views.batch_size == batch
    assert stage.views.resolution_at(0, stage.steps) == res
    assert stage.views.invert_bg_prob == 0.0 and stage.views.seed == 7 == stage.seed
    assert stage.views.radius == stage.radius == 2.0
    assert stage.texture_lr == 0.2 and stage.geom_lr == 1e-4 and not stage.train_geo
    assert stage.steps == (2 if choice == "smoke" else 50)
    assert stage.strength(0, 50) == pytest.approx(0.8 + 0.15 / 50)
    assert stage.strength(49, 50) == pytest.approx(0.95)
    default_size = 128 if choice == "smoke" else 1024
    assert stage.raw_albedo.shape == (default_size, default_size, 3)  # grey default texture (mesh has none)


def test_stage2_config_keys_match_the_constructor(tmp_path):
    from cg_lightning.config.validate import check_targets

    check_targets(compose_stage2(tmp_path, "default"))
    cfg = compose_stage2(tmp_path, "default", ["+stage2.stpes=3"])
    from cg_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match="stpes"):
        check_targets(cfg)
