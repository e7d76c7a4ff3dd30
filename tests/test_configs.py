"""The config tree: every experiment composes, typos fail early, output dirs are deterministic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cg_lightning.config.validate import check_targets, validate_config
from cg_lightning.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


def launch(*args: str, cwd: Path = ROOT, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch.py", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_expected_experiments_exist():
    for name in ["full", "paper", "dreamgaussian", "no_sr", "no_qa_triplet", "no_refine", "smoke", "oracle"]:
        assert name in EXPERIMENTS, f"conf/experiment/{name}.yaml missing"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(compose, example_image, experiment):
    cfg = compose([f"+experiment={experiment}", f"image={example_image}"])
    assert cfg.experiment_name == experiment
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    validate_config(cfg)    # every _target_ matches its constructor


def test_output_dir_is_deterministic_per_image_experiment_seed(compose, example_image):
    cfg = compose(["+experiment=full", f"image={example_image}", "seed=3"])
    run_dir = Path(cfg.hydra.run.dir)
    assert run_dir.parts[-3:] == (example_image.stem, "full", "seed3")
    assert "%" not in str(run_dir) and ":" not in run_dir.name  # no timestamps


def test_result_changing_overrides_get_their_own_subdir(compose, example_image):
    cfg = compose(["+experiment=full", f"image={example_image}", "mesh.resolution=64"])
    assert Path(cfg.hydra.run.dir).name == "mesh.resolution=64"
    cfg = compose(["+experiment=full", f"image={example_image}", "logger=csv"])  # excluded key
    assert Path(cfg.hydra.run.dir).name == "seed0"


def test_typo_in_an_experiment_file_fails_at_compose(compose, example_image, tmp_path):
    from hydra.errors import ConfigCompositionException

    user_conf = tmp_path / "user_conf" / "experiment"
    user_conf.mkdir(parents=True)
    (user_conf / "mine.yaml").write_text("# @package _global_\ndefaults:\n  - full\nseeed: 3\n")
    overrides = [f"hydra.searchpath=[file://{user_conf.parent}]", f"image={example_image}"]
    assert compose([*overrides, "+experiment=full"]).experiment_name == "full"  # the search path itself works
    with pytest.raises(ConfigCompositionException, match="seeed"):
        compose([*overrides, "+experiment=mine"])


def test_unknown_top_level_key_fails(compose, example_image):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="imagee"):
        compose(["+experiment=full", f"image={example_image}", "imagee=typo.png"])
    cfg = compose(["+experiment=full", f"image={example_image}", "+imagee=typo.png"])  # forced add
    with pytest.raises(ConfigError, match="imagee"):
        validate_config(cfg)


def test_misspelled_override_fails_at_compose(compose, example_image):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="stpes"):
        compose(["+experiment=full", f"image={example_image}", "stage1.stpes=3"])


def test_unknown_key_added_to_a_component_names_the_key(compose, example_image):
    cfg = compose(["+experiment=full", f"image={example_image}", "+stage1.stpes=3"])
    with pytest.raises(ConfigError, match=r"stage1\.stpes"):
        check_targets(cfg)


@pytest.mark.parametrize("override,match", [("resume=sometimes", "resume"), ("elevation=120", "elevation"),
                                            ("stages=[stage1,bake]", "bake")])
def test_out_of_range_top_level_values_name_the_key(compose, example_image, override, match):
    cfg = compose(["+experiment=full", f"image={example_image}", override])
    with pytest.raises(ConfigError, match=match):
        validate_config(cfg)


def test_cfg_job_prints_the_composed_config(example_image):
    res = launch("+experiment=full", f"image={example_image}", "--cfg", "job")
    assert res.returncode == 0, res.stderr
    printed = OmegaConf.create(res.stdout)
    assert printed.experiment_name == "full"
    assert printed.image == str(example_image)
    assert "stage1" in printed and "prior" in printed


def test_defaults_tree_and_help_work():
    res = launch("+experiment=full", "image=x.png", "--info", "defaults-tree")
    assert res.returncode == 0, res.stderr
    assert "experiment: full" in res.stdout
    res = launch("--help")
    assert res.returncode == 0 and "experiment" in res.stdout


def test_missing_image_is_a_clear_error():
    res = launch("+experiment=smoke")
    assert res.returncode != 0
    assert "image" in (res.stderr + res.stdout)


def test_experiment_without_plus_explains_the_plus():
    res = launch("experiment=full", "image=x.png", "--cfg", "job")
    assert res.returncode != 0
    assert "+experiment=full" in res.stderr
