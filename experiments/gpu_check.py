"""One command for a CUDA box: environment, GPU tests, GPU benchmarks, a full run, one Markdown report.

    make gpu-check                      # = python experiments/gpu_check.py
    python experiments/gpu_check.py --report gpu_check.md --skip-e2e

What it does, in order (each step is a subprocess with a time limit, so one failure does not hide the rest):

1. environment: GPU, memory, driver, CUDA, torch, gsplat / diff-gaussian-rasterization / nvdiffrast versions;
2. ``make test-gpu`` (pytest -m gpu): every CUDA backend against the torch one on the same scenes, fp16 prior;
3. benchmarks on the GPU: Gaussian rasterizer forward+backward per installed backend, mesh rasterizer per backend,
   mesh extraction, and the stage-1 prior step (SDS on 2 renders + backward) with a full-size Zero-1-to-3 XL
   (860 M UNet, ViT-L/14 image encoder; random weights when the real ones are not in the cache) in fp16;
4. ``+experiment=full`` end to end on the bundled box image (random full-size prior and random LPIPS/CLIP when the
   real weights are absent: the numbers then measure speed and memory only);
5. ``outputs/gpu_check/gpu_check_report.md``: every figure beside the paper's (80 s per image and < 10 GB on an
   RTX 4090).

On a machine without CUDA it stops at once with exit code 2 and a "no CUDA device" message. Planned to finish in
under 10 minutes on one modern GPU (the full run dominates).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPER = {"time_s": 80.0, "peak_gpu_gb": 10.0, "hardware": "RTX 4090 24 GB"}
PACKAGES = ("torch", "gsplat", "diff_gaussian_rasterization", "nvdiffrast", "diffusers", "lightning")
NO_CUDA_EXIT = 2


class NoCUDA(RuntimeError):
    """No usable CUDA device: nothing of the check can run."""


@dataclass
class Step:
    """One subprocess of the check and what came of it."""

    name: str
    cmd: list[str]
    rc: int | None = None
    seconds: float = 0.0
    tail: str = ""
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.rc is None:
            return "skipped"
        return "ok" if self.rc == 0 else ("timeout" if self.rc == 124 else f"FAILED (exit {self.rc})")


# ---------------------------------------------------------------------------------------------- environment
def package_version(name: str) -> str:
    """Installed version of a distribution or module, ``not installed`` otherwise (never raises)."""
    for dist in (name, name.replace("_", "-")):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        module = __import__(name)
    except Exception:
        return "not installed"
    return str(getattr(module, "__version__", "installed (version unknown)"))


def nvidia_driver() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (nvidia-smi not found)"
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def environment() -> dict[str, str]:
    """What the report's first table shows; works without a GPU (then GPU is ``none``)."""
    import torch

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cg_lightning commit": git_commit(),
        "torch CUDA build": str(torch.version.cuda),
        "CUDA available": str(torch.cuda.is_available()),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(
            {
                "GPU": f"{props.name} ({torch.cuda.device_count()} visible)",
                "GPU memory": f"{props.total_memory / 2**30:.1f} GiB",
                "compute capability": f"{props.major}.{props.minor}",
                "driver": nvidia_driver(),
            }
        )
    else:
        env.update({"GPU": "none", "driver": nvidia_driver()})
    env.update({f"{name} version": package_version(name) for name in PACKAGES})
    return env


def require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise NoCUDA(
            f"gpu-check: no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}: "
            "torch.cuda.is_available() is False). Run `make gpu-check` on a machine with an NVIDIA GPU and a "
            "CUDA build of torch matching its driver (README, CPU and GPU)."
        )


# ---------------------------------------------------------------------------------------------- random Zero123-XL
def zero123_xl_modules(device: str = "cpu"):
    """The four networks of Zero-1-to-3 XL at full size (architectures of ashawkey/zero123-xl-diffusers: a
    Stable-Diffusion-1.x UNet with 8 input channels, the SD VAE, CLIP ViT-L/14 with a 768-d projection, and the
    772 -> 768 camera projection), randomly initialised on ``device`` (``meta`` to count parameters for free)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from cg_lightning.priors.zero123 import _camera_projection_class

    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=8,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            cross_attention_dim=768,
            attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            sample_size=256,
            layers_per_block=2,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
        )
        encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=1024,
                intermediate_size=4096,
                num_hidden_layers=24,
                num_attention_heads=16,
                image_size=224,
                patch_size=14,
                projection_dim=768,
                hidden_act="quick_gelu",
            )
        )
        projection = _camera_projection_class()(embedding_dim=768, additional_embeddings=4)
    return unet, vae, encoder, projection


def save_random_zero123_xl(folder: Path, device: str = "cuda") -> Path:
    """A full-size random Zero-1-to-3 XL in the diffusers layout (fp16, ~2.5 GB), loadable by Zero123Prior."""
    import torch
    from diffusers import DDIMScheduler
    from transformers import CLIPImageProcessor

    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    torch.manual_seed(0)
    unet, vae, encoder, projection = zero123_xl_modules(device)
    for name, module in (
        ("unet", unet),
        ("vae", vae),
        ("image_encoder", encoder),
        ("clip_camera_projection", projection),
    ):
        module.half().save_pretrained(folder / name)
    CLIPImageProcessor(crop_size=224, size=224).save_pretrained(folder / "feature_extractor")
    DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
        timestep_spacing="leading",
    ).save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "Zero123Pipeline",
        "_note": "random full-size Zero-1-to-3 XL (gpu_check)",
        "clip_camera_projection": ["zero123", "CLIPCameraProjection"],
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def real_zero123_dir() -> Path | None:
    """The cached real Zero-1-to-3 XL, or None (never downloads)."""
    try:
        from cg_lightning.priors.zero123 import ZERO123_XL, resolve_zero123_dir

        return resolve_zero123_dir(ZERO123_XL, allow_download=False)
    except Exception:
        return None


def prior_step_benchmark(folder: Path, repeats: int = 10) -> dict[str, float]:
    """Stage 1's prior work per step at paper settings: SDS of 2 novel-view renders (512 px, resized to 256 by
    the prior) with backward to the renders, fp16 UNet; median ms and peak GPU memory."""
    import torch

    from cg_lightning.priors.zero123 import Zero123Prior

    prior = Zero123Prior(model=str(folder), seed=0)
    prior.setup(torch.device("cuda"))
    prior.set_reference(torch.rand(1, 3, 256, 256, device="cuda"), 0.0)
    views = (torch.tensor([10.0, -20.0]), torch.tensor([30.0, 90.0]), torch.zeros(2))
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(repeats + 2):
        renders = torch.rand(2, 3, 512, 512, device="cuda", requires_grad=True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        prior.sds(renders, *views, step_ratio=i / (repeats + 2)).loss.backward()
        torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    times.sort()
    return {
        "sds_step_ms": 1000 * times[len(times) // 2],
        "sds_peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30,
    }


# ---------------------------------------------------------------------------------------------- steps
def run_step(step: Step, timeout: float, env: dict[str, str] | None = None) -> Step:
    """Run ``step.cmd`` from the repository root, keeping the last 3000 characters of its output."""
    t0 = time.perf_counter()
    try:
        out = subprocess.run(
            step.cmd,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )
        step.rc, text = out.returncode, out.stdout + out.stderr
    except subprocess.TimeoutExpired as exc:
        step.rc = 124
        text = (
            (exc.stdout or b"").decode(errors="replace")
            if isinstance(exc.stdout, bytes)
            else (exc.stdout or "")
        )
    step.seconds = time.perf_counter() - t0
    step.tail = text[-3000:]
    print(f"[gpu-check] {step.name}: {step.status} in {step.seconds:.0f} s", flush=True)
    return step


def installed_gaussian_backends() -> list[str]:
    names = ["torch"]
    if package_version("gsplat") != "not installed":
        names.append("gsplat")
    if package_version("diff_gaussian_rasterization") != "not installed":
        names.append("inria")
    return names


def benchmark_steps() -> list[Step]:
    py = sys.executable
    mesh_backends = ["torch"] + (["nvdiffrast"] if package_version("nvdiffrast") != "not installed" else [])
    return [
        Step(
            "gaussian rasterizer fwd+bwd (512 px, 20k/50k Gaussians)",
            [
                py,
                "experiments/benchmarks/bench_gaussian_raster.py",
                "--device",
                "cuda",
                "--sizes",
                "512",
                "--counts",
                "20000,50000",
                "--backends",
                ",".join(installed_gaussian_backends()),
                "--no-gsplat-cpu",
                "--threads",
                "0",
                "--repeats",
                "5",
            ],
        ),
        Step(
            "mesh rasterizer fwd+bwd",
            [
                py,
                "experiments/benchmarks/bench_mesh_raster.py",
                "--device",
                "cuda",
                "--backends",
                *mesh_backends,
                "--res",
                "512",
                "1024",
            ],
        ),
        Step(
            "mesh extraction (20k Gaussians, 128^3)",
            [
                py,
                "experiments/benchmarks/bench_mesh_extract.py",
                "--device",
                "cuda",
                "--render-backend",
                "auto",
            ],
        ),
    ]


def superres_weights_present() -> bool:
    """Real-ESRGAN anime-6B (``full``'s super-resolution) is cached, as .pth or as the ncnn files it converts."""
    from cg_lightning.weights import REALESRGAN, cache_root, realesrgan_dir

    name = "RealESRGAN_x4plus_anime_6B"
    ncnn = cache_root() / "realesrgan-ncnn" / REALESRGAN[name].ncnn_stem
    return (realesrgan_dir() / f"{name}.pth").is_file() or (
        ncnn.with_suffix(".param").is_file() and ncnn.with_suffix(".bin").is_file()
    )


def e2e_step(out_root: Path, prior_dir: Path | None, image: str, no_sr: bool = False) -> Step:
    """``+experiment=full`` on ``image``; without the real weights, random full-size prior and random scorers
    (``prior_dir``), and no super-resolution when its weights are absent (``no_sr``)."""
    cmd = [
        sys.executable,
        "launch.py",
        "+experiment=full",
        f"image={image}",
        f"paths.output_root={out_root}",
        "logger=csv",
        "resume=never",
    ]
    if prior_dir is not None:
        cmd += [
            f"prior.model={prior_dir}",
            "perceptual_pretrained=false",
            "evaluation.perceptual=if_available",
        ]
    if no_sr:
        cmd += ["superres=none"]
    return Step("+experiment=full end to end", cmd)


def read_metrics(out_root: Path) -> dict[str, float]:
    """Numbers of the first metrics.json under ``out_root`` (empty if none)."""
    for path in sorted(Path(out_root).rglob("metrics.json")):
        data = json.loads(path.read_text())
        return {k: float(v) for k, v in data.items() if isinstance(v, (int, float))}
    return {}


# ---------------------------------------------------------------------------------------------- report
def figures_rows(figures: dict[str, float]) -> list[tuple[str, str, str]]:
    """(figure, ours, paper) rows of the report; missing figures show as ``-``."""

    def fmt(key: str, unit: str, digits: int = 1) -> str:
        return f"{figures[key]:.{digits}f} {unit}" if key in figures else "-"

    stage_total = sum(
        v
        for k, v in figures.items()
        if k.startswith("time/") and k.endswith("_s") and k not in ("time/total_s", "time/all_steps_s")
    )
    total = figures.get("time/total_s", stage_total or None)
    return [
        (
            "time per image, `+experiment=full`",
            f"{total:.0f} s" if total else "-",
            f"{PAPER['time_s']:.0f} s ({PAPER['hardware']})",
        ),
        ("peak GPU memory", fmt("memory/peak_gpu_gb", "GiB", 2), f"< {PAPER['peak_gpu_gb']:.0f} GB"),
        ("stage 1 (500 steps)", fmt("time/stage1_s", "s"), "-"),
        ("stage 1 peak GPU memory", fmt("memory/stage1_peak_gpu_gb", "GiB", 2), "-"),
        ("mesh extraction", fmt("time/mesh_s", "s"), "-"),
        ("stage 2 (50 steps)", fmt("time/stage2_s", "s"), "-"),
        ("prior step: SDS on 2 renders + backward (fp16)", fmt("sds_step_ms", "ms", 0), "-"),
        ("prior step peak GPU memory", fmt("sds_peak_gpu_gb", "GiB", 2), "-"),
    ]


def write_report(
    path: Path, env: dict[str, str], steps: list[Step], figures: dict[str, float], notes: list[str]
) -> Path:
    """One Markdown file: environment, step status, figures beside the paper's, and each step's output tail."""
    lines = [
        "# gpu-check report",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by `experiments/gpu_check.py`.",
        "",
        "## Environment",
        "",
        "| item | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in env.items()]
    lines += ["", "## Steps", "", "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {s.name} | {s.status} | {s.seconds:.0f} |" for s in steps]
    lines += [
        "",
        "## Figures (paper: ContrastiveGaussian, Table I)",
        "",
        "| figure | this machine | paper |",
        "|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in figures_rows(figures)]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    for s in steps:
        if s.rc is None:
            continue
        lines += ["", f"## {s.name}", "", f"`{' '.join(s.cmd)}`", "", "```", s.tail.rstrip(), "```"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", default="outputs/gpu_check/gpu_check_report.md")
    ap.add_argument("--out", default="outputs/gpu_check", help="scratch folder (random model, the full run)")
    ap.add_argument("--image", default="experiments/data/box/box_rgba.png")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--skip-e2e", action="store_true")
    args = ap.parse_args(argv)
    try:
        require_cuda()
    except NoCUDA as exc:
        print(exc, file=sys.stderr)
        return NO_CUDA_EXIT
    t_start = time.perf_counter()
    env = environment()
    for k, v in env.items():
        print(f"[gpu-check] {k}: {v}", flush=True)
    out = (ROOT / args.out).resolve()
    steps: list[Step] = []
    figures: dict[str, float] = {}
    notes: list[str] = []
    if not args.skip_tests:
        steps.append(
            run_step(
                Step(
                    "make test-gpu",
                    [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"],
                ),
                timeout=240,
            )
        )
    prior_dir = real_zero123_dir()
    random_prior = None
    if prior_dir is None:
        random_prior = save_random_zero123_xl(out / "random-zero123-xl")
        notes.append(
            "Zero-1-to-3 XL weights not in the cache: a random full-size model was used (speed and memory "
            "are representative, quality numbers are not)."
        )
    if not args.skip_bench:
        for step in benchmark_steps():
            steps.append(run_step(step, timeout=150))
        try:
            figures.update(prior_step_benchmark(random_prior or prior_dir))
        except Exception as exc:  # a report with the failure beats no report
            notes.append(f"prior step benchmark failed: {type(exc).__name__}: {exc}")
    if not args.skip_e2e:
        e2e_root = out / "e2e"
        no_sr = not superres_weights_present()
        if no_sr:
            notes.append(
                "Real-ESRGAN weights not cached (`make weights`): the full run used superres=none, so its "
                "time omits the 256 -> 1024 super-resolution (about a second on a GPU)."
            )
        steps.append(run_step(e2e_step(e2e_root, random_prior, args.image, no_sr), timeout=420))
        figures.update(read_metrics(e2e_root))
    notes.append(f"gpu-check took {time.perf_counter() - t_start:.0f} s in all.")
    path = write_report(ROOT / args.report, env, steps, figures, notes)
    print(f"[gpu-check] report: {path}", flush=True)
    return 0 if all(s.rc in (0, None) for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
