"""User errors end to end: missing / wrong weights, bad config values, unwritable output -> one clear message.

Through ``launch.py``: exit status != 0, the message names the problem (and `make weights` for weights), and no
Python traceback reaches the terminal (it is in ``job.log`` and ``FAILED``). The remaining variants run in-process
through :func:`cg_lightning.pipeline.run`, which is what ``launch.py`` calls.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.tiny_models import build_tiny_esrgan, single_thread

from cg_lightning.errors import ConfigError, MissingWeightsError, OutputError, WrongWeightsError

_threads = pytest.fixture(autouse=True)(single_thread)
ROOT = Path(__file__).resolve().parents[1]
BOX = ROOT / "experiments" / "data" / "box" / "box_rgba.png"
SMOKE = ["+experiment=smoke", f"image={BOX}", "preprocess=none", "trainer.enable_progress_bar=false", "logger=none"]
TINY_STAGE1 = [*SMOKE, "stages=[stage1]", "stage1.steps=2", "stage1.num_points=300", "stage1.ref_size=32",
               "stage1.views.resolution.values=[32,32]", "stage1.views.batch_size=1", "loss=dreamgaussian"]
CALLBACK = "++hydra.callbacks.cg._target_=cg_lightning.runtime.hydra_callbacks.JobCallbacks"


def launch(tmp_path: Path, *overrides: str, root: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", HF_HOME=str(tmp_path / "hf"),
               CG_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    root = root or tmp_path / "outputs"
    return subprocess.run([sys.executable, "launch.py", *overrides, f"paths.output_root={root}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def assert_clean_failure(res: subprocess.CompletedProcess, *needles: str) -> str:
    """Non-zero exit, one ``Error:`` message holding every needle, no traceback on the terminal."""
    assert res.returncode != 0
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, res.stderr[-3000:] + res.stdout[-3000:]
    message = res.stderr[res.stderr.index("Error:"):]
    for needle in needles:
        assert needle in message, message
    return message


def job_dir(root: Path) -> Path:
    jobs = [p.parent for p in root.rglob(".hydra")]
    assert len(jobs) == 1, jobs
    return jobs[0]


# ------------------------------------------------------------------------------------------------ weights
def test_missing_prior_weights_offline_through_launch(tmp_path):
    res = launch(tmp_path, *TINY_STAGE1, "prior=zero123_xl")    # the default hub id, nothing cached, offline
    assert_clean_failure(res, "Cannot start", "ashawkey/zero123-xl-diffusers", "make weights")
    assert res.returncode == 2
    # the preflight stops the run before any work: no input processed, nothing to resume, nothing FAILED
    assert not list((tmp_path / "outputs").rglob("input")) and not list((tmp_path / "outputs").rglob("FAILED"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["garbage", "wrong_arch"])
def test_bad_superres_weight_file_through_launch(tmp_path, kind):
    weights = tmp_path / "sr.pth"
    if kind == "garbage":
        weights.write_bytes(b"this is not a checkpoint")
    else:
        build_tiny_esrgan(weights, num_blocks=1)
    res = launch(tmp_path, *TINY_STAGE1, "superres=realesrgan_anime6b", f"superres.weights={weights}")
    assert_clean_failure(res, str(weights), "make weights")


def _run(compose, tmp_path, overrides):
    from cg_lightning.pipeline import run

    return run(compose(overrides, run_dir=tmp_path / "job"))


def _wrong_layout_folder(tmp_path: Path) -> str:
    (tmp_path / "zero123" / "unet").mkdir(parents=True)
    return str(tmp_path / "zero123")


def _garbage_pth(tmp_path: Path) -> str:
    (tmp_path / "garbage.pth").write_bytes(b"\x00garbage")
    return str(tmp_path / "garbage.pth")


def _unknown_arch_pth(tmp_path: Path) -> str:
    torch.save({"params_ema": {"encoder.weight": torch.zeros(3, 3)}}, tmp_path / "unknown.pth")
    return str(tmp_path / "unknown.pth")


def _rrdb_1_block(tmp_path: Path) -> str:
    return str(build_tiny_esrgan(tmp_path / "rrdb1.pth", num_blocks=1))   # anime_6B expects 6 blocks


@pytest.mark.parametrize("make_override,error,needle", [
    (lambda t: ["prior=zero123_xl", "prior.model=/nonexistent/zero123"], MissingWeightsError, "/nonexistent/zero123"),
    (lambda t: ["prior=zero123_xl", f"prior.model={_wrong_layout_folder(t)}"], WrongWeightsError, "vae"),
    (lambda t: ["superres=realesrgan_anime6b", "superres.weights=/nonexistent/sr.pth"], MissingWeightsError,
     "/nonexistent/sr.pth"),
    (lambda t: ["superres=realesrgan_anime6b", f"superres.weights={_garbage_pth(t)}"], WrongWeightsError,
     "garbage.pth"),
    (lambda t: ["superres=realesrgan_anime6b", f"superres.weights={_unknown_arch_pth(t)}"], WrongWeightsError,
     "unknown.pth"),
    (lambda t: ["superres=realesrgan_anime6b", f"superres.weights={_rrdb_1_block(t)}"], WrongWeightsError,
     "blocks"),
], ids=["prior-missing-folder", "prior-wrong-layout", "sr-missing-file", "sr-garbage", "sr-unknown-arch",
        "sr-wrong-block-count"])
def test_weights_problems_are_one_clear_error_naming_make_weights(compose, tmp_path, monkeypatch, make_override,
                                                                  error, needle):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(error) as info:
        _run(compose, tmp_path, [*TINY_STAGE1, *make_override(tmp_path)])
    assert needle in str(info.value) and "make weights" in str(info.value)
    failed = (tmp_path / "job" / "FAILED").read_text()
    assert failed.startswith(f"{error.__name__} (user error)") and "make weights" in failed


# ------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("override,needle", [
    ("stage1.steps=-5", "stage1.steps=-5"),
    ("stage1.steps=abc", "stage1.steps='abc'"),
    ("stage1.steps=2.5", "stage1.steps=2.5"),
    ("stage2.steps=0", "stage2.steps=0"),
    ("loss.qa_triplet.threshold=1.5", "loss.qa_triplet.threshold=1.5"),
    ("loss.qa_triplet.threshold=-0.1", "loss.qa_triplet.threshold=-0.1"),
    ("stage1.density.min_opacity=2", "stage1.density.min_opacity=2"),
    ("stage1.density.interval=0", "stage1.density.interval=0"),
    ("stage1.views.invert_bg_prob=1.5", "stage1.views.invert_bg_prob=1.5"),
    ("stage1.lrs.xyz=-0.01", "stage1.lrs.xyz=-0.01"),
    ("stage1.views.resolution.values=[4,64]", "stage1.views.resolution.values[0]=4"),
    ("mesh.opacity_threshold=1.5", "mesh.opacity_threshold=1.5"),
    ("mesh.resolution=100", "mesh.num_blocks"),
    ("mesh.resolution=abc", "mesh.resolution='abc'"),
    ("stage2.viewcos_threshold=2", "stage2.viewcos_threshold=2"),
    ("stage2.ssaa_min=3", "stage2.ssaa_min=3"),
    ("evaluation.views=0", "evaluation.views=0"),
    ("evaluation.turntable.fps=-1", "evaluation.turntable.fps=-1"),
    ("callbacks.checkpoint_every_n_steps=0", "callbacks.checkpoint_every_n_steps=0"),
    ("prior.guidance_scale=-1", "prior.guidance_scale=-1"),
    ("+stage1.stpes=3", "stage1.stpes"),
    ("+mesh.resolutoin=3", "mesh.resolutoin"),
    ("+evaluation.turntable.fsp=3", "evaluation.turntable.fsp"),
])
def test_bad_values_fail_validation_naming_the_key(compose, override, needle):
    from cg_lightning.config.validate import validate_config

    cfg = compose(["+experiment=full", f"image={BOX}", override])
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    assert needle in str(info.value)


def test_every_experiment_at_debug_size_passes_validation(compose):
    """(tests/test_configs.py validates the experiments themselves; this adds their +debug=tiny versions)"""
    from cg_lightning.config.validate import validate_config

    for path in sorted((ROOT / "conf" / "experiment").glob("*.yaml")):
        if "- /debug:" not in path.read_text():  # smoke (debug/tiny) and oracle (debug/oracle) carry their own
            validate_config(compose([f"+experiment={path.stem}", f"image={BOX}", "+debug=tiny"]))


def test_bad_config_value_through_launch(tmp_path):
    res = launch(tmp_path, *SMOKE, "loss.qa_triplet.threshold=1.5")
    assert_clean_failure(res, "loss.qa_triplet.threshold=1.5", "[0, 1]")


# ------------------------------------------------------------------------------------------------ output
@pytest.fixture
def read_only_dir(tmp_path):
    """A really read-only directory: chmod for a normal user, a read-only tmpfs for root (skip when impossible)."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("running as root without permission to mount a read-only file system")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_read_only_output_root_through_launch(tmp_path, read_only_dir):
    res = launch(tmp_path, *SMOKE, CALLBACK, root=read_only_dir / "outputs")
    assert_clean_failure(res, f"paths.output_root={read_only_dir / 'outputs'}", "cannot be written")
    assert res.returncode == 2


def test_output_root_under_a_file_through_launch(tmp_path):
    (tmp_path / "a_file").write_text("x")
    res = launch(tmp_path, *SMOKE, CALLBACK, root=tmp_path / "a_file" / "outputs")
    assert_clean_failure(res, "paths.output_root=", "not a directory")


def test_read_only_job_dir_is_an_output_error(compose, tmp_path, monkeypatch):
    import cg_lightning.utils.atomic as atomic

    def read_only(*_a, **_k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", read_only)
    with pytest.raises(OutputError, match="read-only"):
        _run(compose, tmp_path, SMOKE)


def test_disk_full_mid_stage1_is_an_output_error_and_keeps_the_checkpoint(compose, tmp_path, monkeypatch):
    import cg_lightning.utils.atomic as atomic

    real_replace = os.replace

    def full_for_the_ply(src, dst):
        if str(dst).endswith("point_cloud.ply"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", full_for_the_ply)
    with pytest.raises(OutputError, match="Disk full while writing .*point_cloud.ply"):
        _run(compose, tmp_path, [*TINY_STAGE1, "callbacks.checkpoint_every_n_steps=1"])
    job = tmp_path / "job"
    assert (job / "FAILED").read_text().startswith("OutputError (user error): Disk full")
    assert torch.load(job / "stage1" / "ckpts" / "last.ckpt", weights_only=False)["global_step"] == 2
    assert not list((job / "stage1").glob(".point_cloud.ply.*")), "temp file left behind"


@pytest.mark.parametrize("code,message", [(errno.ENOSPC, "Disk full or over quota while writing .*metrics.csv"),
                                          (errno.EDQUOT, "Disk full or over quota while writing .*metrics.csv"),
                                          (errno.EROFS, "Read-only file system while writing .*metrics.csv")])
def test_write_errors_of_plain_writers_become_output_errors(tmp_path, code, message):
    """Writers that are not atomic (Lightning's CSV logger, W&B) raise raw OSErrors: the job guard translates them."""
    from cg_lightning.runtime.task import job_guard

    with pytest.raises(OutputError, match=message):
        with job_guard(tmp_path, continue_on_error=False):
            raise OSError(code, os.strerror(code), str(tmp_path / "csv" / "metrics.csv"))
    assert (tmp_path / "FAILED").read_text().startswith("OutputError (user error)")


def test_checkpoint_write_failure_from_torch_is_an_output_error(tmp_path, monkeypatch):
    from cg_lightning.runtime.trainer import AtomicCheckpointIO

    def zip_writer_failure(*_a, **_k):   # what torch.save raises on ENOSPC (no errno attached)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(torch, "save", zip_writer_failure)
    with pytest.raises(OutputError, match="disk full"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, tmp_path / "last.ckpt")
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------ a real full disk
@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a tmpfs of that many KiB (root only; skipped where mounting is not allowed)."""
    mounts = []

    def mount(kib: int) -> Path:
        path = tmp_path / f"disk{len(mounts)}"
        path.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(path)], capture_output=True)
        if res.returncode != 0:
            pytest.skip("cannot mount a small tmpfs here (needs root)")
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        subprocess.run(["umount", str(path)], check=False)


def assert_one_paragraph(res: subprocess.CompletedProcess, *needles: str) -> str:
    message = assert_clean_failure(res, *needles)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "--- Logging error ---" not in res.stderr, res.stderr[-3000:]
    assert res.stderr.count("\nError:") == 1, res.stderr[-3000:]
    return message


def test_full_disk_before_the_job_starts_through_launch(tmp_path, small_disk):
    disk = small_disk(64)
    subprocess.run(["dd", "if=/dev/zero", f"of={disk / 'filler'}", "bs=4k"], capture_output=True)  # fill it up
    assert os.statvfs(disk).f_bavail == 0
    res = launch(tmp_path, *SMOKE, root=disk / "outputs")
    assert_one_paragraph(res, "full")


@pytest.mark.slow
def test_disk_filling_mid_run_is_one_message_through_launch(tmp_path, small_disk):
    disk = small_disk(400)      # room for .hydra/, the log and the input images, not for the stage-1 checkpoint
    res = launch(tmp_path, *TINY_STAGE1, "stage1.num_points=20000", root=disk / "outputs")
    message = assert_one_paragraph(res)
    assert "full" in message.lower(), message
    assert res.stderr.count("Warning: cannot write the log") <= 1


@pytest.mark.parametrize("image, needle", [(None, "image"), ("", "No input image given")])
def test_missing_or_empty_image_through_launch(tmp_path, image, needle):
    args = ["+experiment=full"] + ([] if image is None else [f"image={image}"])
    res = launch(tmp_path, *args)
    assert_one_paragraph(res, needle)
    assert len(res.stderr.strip().splitlines()) <= 6, res.stderr


def test_path_hydra_cannot_read_gets_the_quoting_through_launch(tmp_path):
    res = launch(tmp_path, "+experiment=smoke", "image=/data/my=photo.png")
    assert_one_paragraph(res, "\"image='/data/my=photo.png'\"")
