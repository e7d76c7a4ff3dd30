"""``make gpu-check`` on a CPU: it must stop at once with a clear message; its non-GPU parts (environment,
report, the full-size random Zero-1-to-3 XL's architecture, the command lines) are checked here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import gpu_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_no_cuda_fails_fast_with_a_clear_message(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "gpu_check.py"), "--report", str(tmp_path / "r.md")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == gpu_check.NO_CUDA_EXIT
    assert "no CUDA device" in out.stderr and "make gpu-check" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "r.md").exists()


def test_environment_lists_gpu_driver_cuda_and_backends():
    env = gpu_check.environment()
    for key in (
        "GPU",
        "driver",
        "torch CUDA build",
        "torch version",
        "gsplat version",
        "diff_gaussian_rasterization version",
        "nvdiffrast version",
        "cg_lightning commit",
    ):
        assert key in env, key
    assert (
        env["torch version"] == torch.__version__.split("+")[0] or env["torch version"] == torch.__version__
    )
    if not torch.cuda.is_available():
        assert env["GPU"] == "none"
    assert gpu_check.package_version("no_such_package_xyz") == "not installed"


def test_report_puts_each_figure_beside_the_paper(tmp_path):
    steps = [
        gpu_check.Step("make test-gpu", ["pytest"], rc=0, seconds=12.3, tail="5 passed"),
        gpu_check.Step("bench", ["x"], rc=1, seconds=3, tail="boom"),
        gpu_check.Step("e2e", ["launch.py"]),
    ]
    figures = {
        "time/total_s": 71.4,
        "time/stage1_s": 50.0,
        "time/mesh_s": 9.0,
        "time/stage2_s": 12.0,
        "memory/peak_gpu_gb": 8.25,
        "sds_step_ms": 61.0,
    }
    path = gpu_check.write_report(
        tmp_path / "sub" / "report.md", {"GPU": "Test GPU"}, steps, figures, ["a note"]
    )
    text = path.read_text()
    assert "| GPU | Test GPU |" in text
    assert "| make test-gpu | ok | 12 |" in text and "| bench | FAILED (exit 1) | 3 |" in text
    assert "| e2e | skipped | 0 |" in text
    assert "| time per image, `+experiment=full` | 71 s | 80 s (RTX 4090 24 GB) |" in text
    assert "| peak GPU memory | 8.25 GiB | < 10 GB |" in text
    assert "| stage 2 (50 steps) | 12.0 s | - |" in text and "| mesh extraction | 9.0 s | - |" in text
    assert "5 passed" in text and "boom" in text and "- a note" in text
    assert not list(tmp_path.rglob("*.tmp"))


def test_missing_figures_show_as_dashes():
    rows = dict((a, b) for a, b, _ in gpu_check.figures_rows({}))
    assert rows["time per image, `+experiment=full`"] == "-" and rows["peak GPU memory"] == "-"
    rows = dict(
        (a, b)
        for a, b, _ in gpu_check.figures_rows(
            {"time/stage1_s": 40.0, "time/stage2_s": 10.0, "time/all_steps_s": 99.0}
        )
    )
    assert rows["time per image, `+experiment=full`"] == "50 s"


def test_random_zero123_xl_is_full_size():
    unet, vae, encoder, projection = gpu_check.zero123_xl_modules("meta")  # no memory, no time

    def millions(m):
        return sum(p.numel() for p in m.parameters()) / 1e6

    assert millions(unet) == pytest.approx(859.53, abs=0.01)  # SD-1.x UNet with 8 input channels
    assert millions(vae) == pytest.approx(83.65, abs=0.01)
    assert millions(encoder) == pytest.approx(303.97, abs=0.01)  # CLIP ViT-L/14 + 768-d projection
    assert projection.proj.in_features == 772 and projection.proj.out_features == 768
    assert unet.config.in_channels == 8 and unet.config.cross_attention_dim == 768


def test_step_runner_and_e2e_command(tmp_path):
    step = gpu_check.run_step(
        gpu_check.Step("echo", [sys.executable, "-c", "print('hi'); raise SystemExit(3)"]), timeout=60
    )
    assert step.rc == 3 and "hi" in step.tail and step.status == "FAILED (exit 3)"
    slow = gpu_check.run_step(
        gpu_check.Step("sleep", [sys.executable, "-c", "import time; time.sleep(30)"]), timeout=1
    )
    assert slow.status == "timeout"
    cmd = gpu_check.e2e_step(tmp_path, tmp_path / "rand", "img.png").cmd
    assert "+experiment=full" in cmd and f"prior.model={tmp_path / 'rand'}" in cmd
    assert "evaluation.perceptual=if_available" in cmd
    assert not any(c.startswith("prior.model") for c in gpu_check.e2e_step(tmp_path, None, "img.png").cmd)
    assert "superres=none" in gpu_check.e2e_step(tmp_path, None, "img.png", no_sr=True).cmd
    assert isinstance(gpu_check.superres_weights_present(), bool)


def test_e2e_overrides_compose(compose, tmp_path):
    """The overrides gpu-check adds to the full run are valid keys of the config tree."""
    cmd = gpu_check.e2e_step(tmp_path / "o", tmp_path / "rand", "x.png", no_sr=True).cmd
    cfg = compose([c for c in cmd if "=" in c and not c.startswith("paths.")])
    assert cfg.experiment_name == "full" and cfg.prior.model == str(tmp_path / "rand")
    assert cfg.evaluation.perceptual == "if_available" and cfg.perceptual_pretrained is False
    assert cfg.superres.get("_target_") is None or "RealESRGAN" not in str(cfg.superres.get("_target_"))


def test_read_metrics(tmp_path):
    job = tmp_path / "box_rgba" / "full" / "seed0"
    job.mkdir(parents=True)
    (job / "metrics.json").write_text('{"time/total_s": 70.5, "eval/perceptual_skipped": "off"}')
    assert gpu_check.read_metrics(tmp_path) == {"time/total_s": 70.5}
    assert gpu_check.read_metrics(tmp_path / "none") == {}


def test_random_zero123_folder_loads_through_the_real_loader(tmp_path, monkeypatch):
    """save_random_zero123_xl's layout, with small networks swapped in for the full-size ones."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from cg_lightning.priors.zero123 import _camera_projection_class, load_zero123_components

    def small_modules(device="cpu"):
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=8,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(16, 32),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=4,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            latent_channels=4,
            layers_per_block=1,
            block_out_channels=(4, 8),
            norm_num_groups=4,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
        )
        encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=4,
                image_size=224,
                patch_size=32,
                projection_dim=32,
            )
        )
        return unet, vae, encoder, _camera_projection_class()(embedding_dim=32, additional_embeddings=4)

    monkeypatch.setattr(gpu_check, "zero123_xl_modules", small_modules)
    folder = gpu_check.save_random_zero123_xl(tmp_path / "rand", device="cpu")
    c = load_zero123_components(folder, torch.float16)
    assert c.unet.dtype == torch.float16 and c.unet.config.in_channels == 8
    assert c.scheduler.config.prediction_type == "epsilon" and c.scheduler.config.steps_offset == 1
    assert gpu_check.save_random_zero123_xl(folder) == folder  # reused, not rebuilt
